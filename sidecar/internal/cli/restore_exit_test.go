package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRestoreRefusalExitsUntouched: a restore refused before anything is touched (here:
// no archive at the storage URL) exits ExitRestoreUntouched, and the data directory is as
// it was, stale postmaster.pid included.
func TestRestoreRefusalExitsUntouched(t *testing.T) {
	base := t.TempDir()
	pgdata := filepath.Join(base, "pgdata")
	if err := os.Mkdir(pgdata, 0o700); err != nil {
		t.Fatal(err)
	}
	// PID 2^22+1 is above Linux's pid_max limit: no such process can exist.
	if err := os.WriteFile(filepath.Join(pgdata, "postmaster.pid"), []byte("4194305\n"+pgdata+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(base, "archive")
	if err := os.Mkdir(archive, 0o700); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := Execute(context.Background(), "test", []string{"restore", "--storage", "file://" + archive, "--pgdata", pgdata,
		"--to", "latest", "--move-aside"}, &stdout, &stderr)
	if code != ExitRestoreUntouched {
		t.Fatalf("exit %d, want %d; stderr: %s", code, ExitRestoreUntouched, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stale") {
		t.Errorf("stderr does not report the stale postmaster.pid: %s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(pgdata, "postmaster.pid")); err != nil {
		t.Errorf("the data directory changed: %v", err)
	}
	if entries, _ := os.ReadDir(base); len(entries) != 2 {
		t.Errorf("%s holds %d entries, want only pgdata and archive", base, len(entries))
	}
	// A bad flag value is a refusal too.
	if code := Execute(context.Background(), "test", []string{"restore", "--storage", "file://" + archive, "--pgdata", pgdata,
		"--to", "2026-01-01 10:00"}, &stdout, &stderr); code != ExitRestoreUntouched {
		t.Errorf("bad --to: exit %d, want %d", code, ExitRestoreUntouched)
	}
}
