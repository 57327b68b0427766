package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

func TestEncryptedArchiveRestoresWithItsKeyAndFailsClosedWithout(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	root := strings.TrimPrefix(url, "file://")
	keyDir := t.TempDir()
	os.Chmod(keyDir, 0o755)
	keyFile := filepath.Join(keyDir, "key")
	os.WriteFile(keyFile, []byte("6b63626163b075702d746573742d6b65792d3031323334353637383930616263\n"), 0o644)
	wrongKey := filepath.Join(keyDir, "wrong")
	os.WriteFile(wrongKey, bytes.Repeat([]byte{9}, 32), 0o644)
	withKey := []string{"KCBACKUP_ENCRYPTION_KEY_FILE=" + keyFile}

	pg := harness.StartPostgres(t, pgSettings(nil))
	// Compression off, so that only encryption could hide the marker in the stored objects.
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: withKey, Args: []string{"--compression", "none"}})
	exec1(t, pg, "CREATE TABLE secrets AS SELECT 'plaintext-marker-' || g AS s FROM generate_series(1, 5000) g")
	if _, stderr, code := harness.Kcbackup(t, ctx, append(pg.Env(), withKey...), "backup", "--storage", url); code != 0 {
		t.Fatalf("encrypted backup: %s", stderr)
	}
	exec1(t, pg, "INSERT INTO secrets SELECT 'plaintext-marker-late-' || g FROM generate_series(1, 500) g")
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("plaintext-marker-")) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Without the key, or with another, nothing is listed or restored.
	for _, env := range [][]string{nil, {"KCBACKUP_ENCRYPTION_KEY_FILE=" + wrongKey}} {
		_, stderr, code := harness.Kcbackup(t, ctx, env, "list", "--storage", url)
		if code == 0 || !strings.Contains(stderr, "encrypted") {
			t.Fatalf("list with %v: exit %d %s; want a refusal naming the encryption", env, code, stderr)
		}
	}
	dir := filepath.Join(t.TempDir(), "pgdata")
	if _, _, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest"); code == 0 {
		t.Fatal("restore without the key succeeded")
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("a restore without the key created the destination")
	}
	// With the key: restore, recovery through the encrypted WAL, all rows back.
	restored, _ := restoreAndStart(t, withKey, url, "latest")
	if got := query(t, restored, "SELECT count(*) FROM secrets"); got != "5500" {
		t.Fatalf("restored %s rows; want 5500", got)
	}
	if out, _, code := harness.Kcbackup(t, ctx, withKey, "verify", "--storage", url); code != 0 {
		t.Fatalf("verify with the key: %s", out)
	}
}
