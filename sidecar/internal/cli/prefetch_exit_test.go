package cli

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// prefetcherArgsEnv makes the test binary, run as a child process, run the command line it
// holds (separated by \x1f) as kcbackup's main does (see TestMain).
const prefetcherArgsEnv = "KCBACKUP_TEST_MAIN_ARGS"

// TestMain runs this package's tests, or, in a child process the tests start, the one
// helper its environment names: kcbackup's main (prefetcherArgsEnv) or a fetch that
// stalls (blockedFetchEnv). The helpers are not tests, so a normal run skips nothing.
func TestMain(m *testing.M) {
	if args := os.Getenv(prefetcherArgsEnv); args != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Execute(ctx, "test", strings.Split(args, "\x1f"), os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if dir := os.Getenv(blockedFetchEnv); dir != "" {
		blockedFetch(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startPrefetcher starts `kcbackup wal-fetch --prefetch-worker` for the segment after
// storage, as wal-fetch starts it, with stderr piped to the caller.
func startPrefetcher(t *testing.T, storage string, env ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	args := []string{"wal-fetch", "--prefetch-worker", "--storage", storage, "--prefetch", "2",
		"--prefetch-dir", t.TempDir(), "--encryption-key-file", "", "--retry-for", "1h", "000000010000000000000005", "-"}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), prefetcherArgsEnv+"="+strings.Join(args, "\x1f")), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, stderr
}

// exitStatus waits for cmd and returns how it ended: "exit N" or "signal S".
func exitStatus(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err == nil {
			return "exit 0"
		}
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	case <-time.After(time.Minute):
		t.Fatal("the prefetcher did not exit within a minute")
		return ""
	}
}

// A prefetcher is reparented to PID 1, which in the official postgres image is the
// postmaster: any exit status but 0 or 1, or a death by a signal, makes PostgreSQL restart
// every backend. It exits 0 when its archive cannot be opened...
func TestPrefetcherExitsZeroWhenItFails(t *testing.T) {
	missing := "file://" + filepath.Join(t.TempDir(), "no-archive-here")
	cmd, stderr := startPrefetcher(t, missing)
	logged, _ := io.ReadAll(stderr)
	if got := exitStatus(t, cmd); got != "exit 0" {
		t.Fatalf("prefetcher without an archive: %s; want exit 0 (stderr: %s)", got, logged)
	}
	if !strings.Contains(string(logged), "no-archive-here") {
		t.Errorf("the prefetcher's error names no storage: %q", logged)
	}
}

// ...and when a signal it can catch ends it, while it waits on an unreachable store.
func TestPrefetcherExitsZeroOnTerminationSignals(t *testing.T) {
	unreachable := []string{"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y", "AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_S3=http://127.0.0.1:1", "AWS_EC2_METADATA_DISABLED=true", "KCBACKUP_S3_FORCE_PATH_STYLE=true"}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, stderr := startPrefetcher(t, "s3://nobucket/x", unreachable...)
			// It is retrying the store (its handlers are in place) once it says so.
			lines := bufio.NewScanner(stderr)
			for lines.Scan() && !strings.Contains(lines.Text(), "retrying in") {
			}
			if lines.Err() != nil {
				t.Fatal(lines.Err())
			}
			go io.Copy(io.Discard, stderr)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if got := exitStatus(t, cmd); got != "exit 0" {
				t.Fatalf("prefetcher sent %v: %s; want exit 0", sig, got)
			}
		})
	}
}
