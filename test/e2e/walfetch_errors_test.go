package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// wal-fetch answers a permission error at once, as a failure PostgreSQL stops recovery on,
// instead of retrying it silently for --retry-for; passing errors are retried, each retry's
// cause on stderr (PostgreSQL's log).
func TestWALFetchFailsAtOnceOnPermissionErrorsAndLogsRetries(t *testing.T) {
	if os.Geteuid() != 0 {
		if harness.InCI() {
			t.Fatal("CI runs as root: this test runs wal-fetch as the postgres user")
		}
		t.Skip("needs root to run wal-fetch as another user")
	}
	ctx := context.Background()
	pg, url, sc, _ := archivedCluster(t, "200ms")
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)
	a := openArchive(t, url)
	objs, err := a.Storage.List(ctx, walarchive.TimelineDir(1))
	if err != nil || len(objs) == 0 {
		t.Fatalf("list: %v", err)
	}
	key := objs[0].Key
	name := filepath.Base(key)
	// The object is readable by root only: as if written outside the archive's group.
	if err := os.Chmod(filepath.Join(strings.TrimPrefix(url, "file://"), key), 0o600); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	os.Chmod(dest, 0o777)
	run := func(storage string) (string, int) {
		var stderr bytes.Buffer
		cmd := exec.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", harness.KcbackupBinary(t),
			"wal-fetch", "--storage", storage, "--retry-for", "1h", name, filepath.Join(dest, name))
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stderr.String(), code
	}
	stderr, code := run(url)
	if code != 255 || !strings.Contains(stderr, "permission denied") || strings.Contains(stderr, "retrying") {
		t.Fatalf("wal-fetch of an unreadable object: exit %d, stderr %q; want 255 at once, naming the permission error", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dest, name)); err == nil {
		t.Fatal("wal-fetch left a file at the destination")
	}
	// A passing error (nothing listens on the endpoint) is retried, and each retry is logged.
	var stderrBuf bytes.Buffer
	cmd := exec.Command(harness.KcbackupBinary(t), "wal-fetch", "--storage", "s3://nobucket/x", "--retry-for", "2s", name, filepath.Join(dest, name))
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y", "AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_S3=http://127.0.0.1:1", "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	cmd.Stderr = &stderrBuf
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 255 || !strings.Contains(stderrBuf.String(), "retrying in") {
		t.Fatalf("wal-fetch with the storage unreachable: %v, stderr %q; want exit 255 after logged retries", err, stderrBuf.String())
	}
}
