package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// TestRestoredCopyRecoversThroughReadOnlyServe: a new instance restored with --fetch-via
// recovers every row through `kcbackup serve` and promotes, while serve writes nothing
// into the archive (its objects are the same before and after), answers nothing but WAL,
// and refuses the admin token the production sidecar holds.
func TestRestoredCopyRecoversThroughReadOnlyServe(t *testing.T) {
	ctx := context.Background()
	// Step 1: a production cluster with its sidecar, a backup, then rows and load after it.
	pg, url, sc, _ := archivedCluster(t, "200ms")
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	l := startLedger(t, pg)
	bench := pgbenchFor(t, pg, "3")
	if err := <-bench; err != nil {
		t.Fatal(err)
	}
	l.waitAcked(t, 100)
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)
	want := ledgerState(t, pg)

	// Step 2: the production sidecar stops, so that whatever the archive gains from here on
	// was written by someone else; restore into a new directory, fetching through serve.
	if err := sc.Stop(time.Minute); err != nil {
		t.Fatalf("stop the production sidecar: %v\n%s", err, sc.Log())
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	tokenFile := filepath.Join(dir, "fetch-token")
	os.WriteFile(tokenFile, []byte("serve-fetch-token\n"), 0o644)
	before := archiveObjects(t, openArchive(t, url))
	srv := startServe(t, url, tokenFile)
	pgdata := filepath.Join(dir, "pgdata")
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", pgdata, "--to", "latest",
		"--owner", "postgres", "--fetch-via", srv.url, "--fetch-token-file", tokenFile); code != 0 {
		t.Fatalf("kcbackup restore --fetch-via exited %d: %s", code, stderr)
	}

	// Step 3: the restored copy recovers through serve, ends recovery at the archive's end
	// (serve's 404) and promotes with every row.
	restored := harness.StartFromDataDir(t, pgdata, harness.PGOptions{})
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := restored.WaitPromoted(wctx); err != nil {
		t.Fatalf("the copy restored through serve did not promote: %v\n%s\nserve log:\n%s", err, restored.Log(), srv.log())
	}
	if got := ledgerState(t, restored); got != want {
		t.Fatalf("copy restored through serve: ledger %s; want %s", got, want)
	}
	if served := srv.walServed(t); served < 2 {
		t.Fatalf("serve served %v WAL files; want the copy's recovery to have gone through it", served)
	}

	// Step 4: serve answers nothing but WAL, and the production sidecar's admin token is not
	// one of its tokens.
	for _, c := range []struct {
		method, path, token string
		code                int
	}{
		{"GET", "/v1/wal/" + walarchive.SegmentName(1, 0xFFFF, 1<<20), "serve-fetch-token", http.StatusNotFound},
		{"GET", "/v1/wal/not-a-wal-file", "serve-fetch-token", http.StatusBadRequest},
		{"GET", "/v1/wal/" + walarchive.SegmentName(1, 1, 1<<20), sc.Token(), http.StatusUnauthorized},
		{"POST", "/v1/backups", sc.Token(), http.StatusForbidden},
		{"POST", "/v1/prune", "serve-fetch-token", http.StatusForbidden},
		{"GET", "/v1/status", sc.Token(), http.StatusForbidden},
	} {
		if code, body := httpDo(t, c.method, srv.url+c.path, c.token); code != c.code ||
			(code == http.StatusForbidden && !strings.Contains(body, "read-only kcbackup serve")) {
			t.Errorf("%s %s: %d %s; want %d", c.method, c.path, code, body, c.code)
		}
	}

	// Step 5: serve stops on SIGTERM with exit 0, and the archive holds exactly the objects
	// it held before serve started (the restore beside it only reads the archive too).
	if err := srv.stop(); err != nil {
		t.Fatalf("serve on SIGTERM: %v\n%s", err, srv.log())
	}
	if after := archiveObjects(t, openArchive(t, url)); after != before {
		t.Fatalf("the archive changed while only serve ran:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	t.Logf("the copy recovered %s through serve; the archive kept its %d objects", want, strings.Count(before, "\n"))
}

// serveProcess is a running `kcbackup serve`.
type serveProcess struct {
	url     string
	cmd     *exec.Cmd
	done    chan error
	logPath string
}

// startServe starts `kcbackup serve` on the archive and waits until /readyz answers 200.
// Its environment holds an admin token, as a container copied from the production
// sidecar's would: serve must ignore it.
func startServe(t *testing.T, url, tokenFile string) *serveProcess {
	t.Helper()
	port := harness.FreePort(t)
	s := &serveProcess{url: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan error, 1), logPath: filepath.Join(t.TempDir(), "serve.log")}
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(harness.KcbackupBinary(t), "serve", "--storage", url, "--fetch-token-file", tokenFile, "--log-level", "debug")
	s.cmd.Env = append(os.Environ(), "KCBACKUP_LISTEN=127.0.0.1:"+strconv.Itoa(port), "KCBACKUP_TOKEN=test-token-"+strconv.Itoa(os.Getpid()))
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start kcbackup serve: %v", err)
	}
	go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("serve log:\n%s", s.log())
		}
	})
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(s.url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("kcbackup serve exited before it was ready: %v\n%s", err, s.log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("kcbackup serve not ready after a minute\n%s", s.log())
	return nil
}

// stop sends SIGTERM and returns how serve exited.
func (s *serveProcess) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("kcbackup serve did not exit within 30s of SIGTERM")
	}
}

func (s *serveProcess) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// walServed sums kcbackup_wal_served_total over its sources.
func (s *serveProcess) walServed(t *testing.T) float64 {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "kcbackup_wal_served_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", sc.Text(), err)
			}
			sum += f
		}
	}
	return sum
}

func httpDo(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
