package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// pgSettings are the server settings the archiving tests use: small segments so tests
// cross many segment boundaries quickly, and enough WAL kept to compare with the archive.
func pgSettings(extra map[string]string) harness.PGOptions {
	s := map[string]string{
		"wal_keep_size":          "512MB",
		"track_commit_timestamp": "on",
		"checkpoint_timeout":     "30s",
		"max_wal_size":           "64MB",
	}
	for k, v := range extra {
		s[k] = v
	}
	return harness.PGOptions{WALSegmentSizeMB: 1, Settings: s}
}

// pgSettingsOn is pgSettings for PostgreSQL version (see harness.ForEachPGVersion).
func pgSettingsOn(version int, extra map[string]string) harness.PGOptions {
	o := pgSettings(extra)
	o.Version = version
	return o
}

// runPG runs the PostgreSQL program name of pg's version, where pg runs, and returns its
// combined output; it fails the test when the program fails.
func runPG(t *testing.T, pg *harness.Postgres, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := pg.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
	return out.String()
}

// fileArchive makes a file:// archive as the permission model of docs/cli.md (Server settings) says
// (harness.FileArchiveDir).
func fileArchive(t *testing.T) string {
	t.Helper()
	return "file://" + harness.FileArchiveDir(t)
}

func query(t *testing.T, pg *harness.Postgres, sql string) string {
	t.Helper()
	v, err := pg.QueryString(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func exec1(t *testing.T, pg *harness.Postgres, sql string) {
	t.Helper()
	if err := pg.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func lsn(t *testing.T, s string) walarchive.LSN {
	t.Helper()
	l, err := walarchive.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitArchived waits until the sidecar reports WAL up to target archived.
func waitArchived(t *testing.T, sc *harness.Sidecar, target walarchive.LSN, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < timeout {
		st, err := sc.Status(context.Background())
		if err == nil && st.ArchivedLSN != "" {
			last = st.ArchivedLSN
			if l, _ := walarchive.ParseLSN(st.ArchivedLSN); l >= target {
				return time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("archive did not reach %s within %s (archived %s)\n%s", target, timeout, last, sc.Log())
	return 0
}

// openArchive opens the archive directly (the tests inspect it).
func openArchive(t *testing.T, url string) *walarchive.Archive {
	t.Helper()
	st, err := walarchive.OpenStorage(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	a, err := walarchive.OpenArchive(context.Background(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fetchAll writes every WAL segment of timeline tli from segment first to last into dir
// with `kcbackup wal-fetch`, as restore_command would.
func fetchAll(t *testing.T, env []string, url string, tli uint32, first, last uint64, segSize uint64, dir string) {
	t.Helper()
	for n := first; n <= last; n++ {
		name := walarchive.SegmentName(tli, n, segSize)
		_, stderr, code := harness.Kcbackup(t, context.Background(), env, "wal-fetch", "--storage", url, name, filepath.Join(dir, name))
		if code != 0 {
			t.Fatalf("wal-fetch %s exited %d: %s", name, code, stderr)
		}
	}
}

// serverFile reads a file of the server's data directory through SQL.
func serverFile(t *testing.T, pg *harness.Postgres, rel string) []byte {
	t.Helper()
	hex := query(t, pg, fmt.Sprintf("SELECT encode(pg_read_binary_file('%s'), 'hex')", rel))
	b := make([]byte, len(hex)/2)
	for i := range b {
		fmt.Sscanf(hex[2*i:2*i+2], "%02x", &b[i])
	}
	return b
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
	return out.String()
}

// setEnv sets KEY=VALUE pairs in the test process for the test's duration.
func setEnv(t *testing.T, env []string) {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			t.Setenv(k, v)
		}
	}
}
