package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunRefusesAFetchTokenEqualToTheAdminToken: the daemon does not start when the
// fetch-only token (here through KCBACKUP_FETCH_TOKEN_FILE) is the admin token, and says so
// before it touches the archive or PostgreSQL.
func TestRunRefusesAFetchTokenEqualToTheAdminToken(t *testing.T) {
	dir := t.TempDir()
	admin, fetch := filepath.Join(dir, "token"), filepath.Join(dir, "fetch-token")
	if err := os.WriteFile(admin, []byte("same-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fetch, []byte("same-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KCBACKUP_FETCH_TOKEN_FILE", fetch)
	archive := filepath.Join(dir, "archive")
	// Bounded, and on a free port: a daemon that wrongly starts stops instead of hanging
	// the test.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Execute(ctx, "test", []string{"run", "--storage", "file://" + archive, "--token-file", admin,
		"--listen", "127.0.0.1:0", "--spool", filepath.Join(dir, "spool"), "--pg-url", "postgres://127.0.0.1:1/postgres"}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "fetch-only token") || !strings.Contains(stderr.String(), "equals the admin token") {
		t.Fatalf("run with equal tokens: exit %d, stderr %q; want a refusal naming both tokens", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "same-token") {
		t.Errorf("the error shows the token: %s", stderr.String())
	}
	if _, err := os.Stat(archive); !os.IsNotExist(err) {
		t.Errorf("the archive %s was touched before the refusal: %v", archive, err)
	}

	// An empty fetch token file is refused too, naming the file.
	if err := os.WriteFile(fetch, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	code = Execute(ctx, "test", []string{"run", "--storage", "file://" + archive, "--token-file", admin,
		"--listen", "127.0.0.1:0", "--spool", filepath.Join(dir, "spool"), "--pg-url", "postgres://127.0.0.1:1/postgres"}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "--fetch-token-file "+fetch+" is empty") {
		t.Fatalf("run with an empty fetch token file: exit %d, stderr %q; want a refusal naming the file", code, stderr.String())
	}
}
