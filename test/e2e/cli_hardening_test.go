package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// archivedWithBackup starts a primary archiving into a file archive, takes a backup, writes
// a few segments after it and waits until they are archived.
func archivedWithBackup(t *testing.T) (*harness.Postgres, string) {
	t.Helper()
	pg := harness.StartPostgres(t, pgSettings(nil))
	url := fileArchive(t)
	harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	for range 4 {
		exec1(t, pg, "INSERT INTO ledger (note) SELECT repeat('x', 200) FROM generate_series(1, 3000)")
		exec1(t, pg, "SELECT pg_switch_wal()")
	}
	waitArchivedPG(t, pg, url)
	return pg, url
}

// An ALTER SYSTEM during recovery rewrites postgresql.auto.conf without the comments of the
// restore's block; recovery-end still removes the restore's settings, and keeps the
// setting ALTER SYSTEM made.
func TestRecoveryEndClearsTheRestoreSettingsAfterAlterSystemDuringRecovery(t *testing.T) {
	ctx := context.Background()
	pg, url := archivedWithBackup(t)
	target := time.Now().UTC()
	time.Sleep(20 * time.Millisecond)
	exec1(t, pg, "INSERT INTO ledger (note) VALUES ('after the target')")
	waitArchivedPG(t, pg, url)

	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "pgdata")
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir,
		"--to", target.Format(time.RFC3339Nano), "--owner", "postgres"); code != 0 {
		t.Fatalf("restore exited %d: %s", code, stderr)
	}
	// Paused at the target (-c outranks postgresql.auto.conf), the server is still in
	// recovery when ALTER SYSTEM runs.
	r := harness.StartFromDataDir(t, dir, harness.PGOptions{Settings: map[string]string{"recovery_target_action": "pause"}})
	waitFor(t, time.Minute, "recovery paused at the target", func() bool {
		s, err := r.QueryString(ctx, "SELECT pg_get_wal_replay_pause_state()")
		return err == nil && s == "paused"
	})
	exec1(t, r, "ALTER SYSTEM SET work_mem = '8MB'")
	conf := string(serverFile(t, r, "postgresql.auto.conf"))
	if strings.Contains(conf, "kcbackup restore at") || !strings.Contains(conf, "restore_command") {
		t.Fatalf("ALTER SYSTEM did not rewrite postgresql.auto.conf as expected:\n%s", conf)
	}
	exec1(t, r, "SELECT pg_wal_replay_resume()")
	if err := r.WaitPromoted(ctx); err != nil {
		t.Fatal(err)
	}
	left := query(t, r, `SELECT coalesce(string_agg(name || ' = ' || setting, ', '), '') FROM pg_file_settings
		WHERE (name LIKE 'recovery_target%' OR name IN ('restore_command', 'recovery_end_command')) AND sourcefile LIKE '%postgresql.auto.conf'`)
	if left != "" {
		t.Fatalf("after promotion, postgresql.auto.conf still sets %s\n%s", left, serverFile(t, r, "postgresql.auto.conf"))
	}
	for name, want := range map[string]string{"work_mem": "8MB", "archive_mode": "off"} {
		got := query(t, r, "SELECT coalesce(max(setting), '') FROM pg_file_settings WHERE name = '"+name+"' AND sourcefile LIKE '%postgresql.auto.conf'")
		if got != want {
			t.Errorf("after promotion, postgresql.auto.conf sets %s to %q; want %q", name, got, want)
		}
	}
	if got := query(t, r, "SELECT count(*) FROM ledger WHERE note = 'after the target'"); got != "0" {
		t.Errorf("the restore holds %s rows written after the target", got)
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pid1Server is a restored PostgreSQL 15 running as PID 1 of its own PID namespace, as in
// the official postgres image: it reaps every orphan of the namespace.
type pid1Server struct {
	pid     int // the postmaster's PID on the host
	port    int
	logPath string
}

// startAsPID1 starts postgres on dir as the postgres user, as PID 1 of a new PID namespace
// (unshare --pid --fork --mount-proc), and waits until it accepts connections. It is
// killed, namespace and all, when the test ends.
func startAsPID1(t *testing.T, dir string) *pid1Server {
	t.Helper()
	base, err := os.MkdirTemp("", "kcbackup-pid1-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	runCmd(t, "chown", "-R", "postgres:postgres", base, dir)
	os.Chmod(dir, 0o700)
	bin := harness.PGBinDir
	if d := os.Getenv(harness.PGBinDirEnv); d != "" {
		bin = d
	}
	s := &pid1Server{port: harness.FreePort(t), logPath: filepath.Join(base, "postgres.log")}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
		"setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		filepath.Join(bin, "postgres"), "-D", dir, "-c", "port="+strconv.Itoa(s.port), "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+base, "-c", "logging_collector=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = base
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare --pid: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(s.logPath)
			t.Logf("log of the PID-1 server:\n%s", log)
		}
		cmd.Process.Kill() // --kill-child: the postmaster, and with it the namespace, goes too
		cmd.Wait()
	})
	children := fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)
	waitFor(t, 30*time.Second, "the postmaster forked by unshare", func() bool {
		b, _ := os.ReadFile(children)
		s.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return s.pid > 0
	})
	if ns := nsPID(t, s.pid); ns != 1 {
		t.Fatalf("the postmaster is PID %d in its namespace; want 1", ns)
	}
	waitFor(t, 2*time.Minute, "the PID-1 server to accept connections", func() bool {
		c, err := pgconn.Connect(context.Background(), s.connString())
		if err == nil {
			c.Close(context.Background())
		}
		return err == nil
	})
	return s
}

func (s *pid1Server) connString() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

func (s *pid1Server) query(t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	res, err := c.Exec(context.Background(), sql).ReadAll()
	if err != nil || len(res) == 0 || len(res[len(res)-1].Rows) == 0 {
		t.Fatalf("query %q on the PID-1 server: %v", sql, err)
	}
	return string(res[len(res)-1].Rows[0][0])
}

// nsPID returns pid's PID in its own (innermost) PID namespace.
func nsPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no NSpid", pid)
	return 0
}

// procParent returns pid's parent, or 0 once pid is gone (reaped).
func procParent(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// holdsSegment reports whether dir holds a prefetched segment.
func holdsSegment(dir string) bool {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if walarchive.IsSegmentName(e.Name()) {
			return true
		}
	}
	return false
}

// hasZombieChild reports whether a child of pid has exited and is not reaped yet.
func hasZombieChild(pid int) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err == nil && bytes.Contains(b, []byte("\nPPid:\t"+strconv.Itoa(pid)+"\n")) && bytes.Contains(b, []byte("\nState:\tZ")) {
			return true
		}
	}
	return false
}

// findProcess returns the PID of the process whose command line contains every one of
// parts (0 if none).
func findProcess(parts ...string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		all := true
		for _, p := range parts {
			all = all && bytes.Contains(b, []byte(p))
		}
		if all {
			return pid
		}
	}
	return 0
}

// The prefetcher that wal-fetch starts outlives it, so the namespace's PID 1 reaps it;
// where that is the postmaster, an exit status other than 0 or 1, or a death by a signal,
// would make PostgreSQL restart every backend. A restore runs under a PID-1 postmaster,
// then prefetchers started in its namespace are stopped by signals, and one fails: the
// postmaster never restarts.
func TestPrefetchersNeverMakeAPID1PostmasterRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		if harness.InCI() {
			t.Fatal("CI runs as root: this test needs a PID namespace")
		}
		t.Skip("needs root for a PID namespace")
	}
	ctx := context.Background()
	_, url := archivedWithBackup(t)
	base, err := os.MkdirTemp("", "kcbackup-pid1-data-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	dir := filepath.Join(base, "pgdata")
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest",
		"--owner", "postgres", "--prefetch", "4"); code != 0 {
		t.Fatalf("restore exited %d: %s", code, stderr)
	}

	// Step 1: recovery under the PID-1 postmaster, its restore_command starting a prefetcher.
	s := startAsPID1(t, dir)
	conn, err := pgconn.Connect(ctx, s.connString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	waitFor(t, 2*time.Minute, "the end of recovery", func() bool { return s.query(t, conn, "SELECT pg_is_in_recovery()") == "f" })
	backend := s.query(t, conn, "SELECT pg_backend_pid()")
	started := s.query(t, conn, "SELECT pg_postmaster_start_time()")
	if log, _ := os.ReadFile(s.logPath); !bytes.Contains(log, []byte("restored log file")) {
		t.Fatalf("recovery restored no segment through restore_command:\n%s", log)
	}

	// Step 2: prefetchers started by wal-fetch inside the namespace, as restore_command
	// starts them, each stopped by a signal once the postmaster is its parent.
	seg := firstSegment(t, url)
	scratch := filepath.Join(base, "scratch")
	os.Mkdir(scratch, 0o755)
	runCmd(t, "chown", "postgres:postgres", scratch)
	// Output to a file, as restore_command's goes to the server log: a prefetcher inherits
	// it and would hold a pipe open.
	outPath := filepath.Join(scratch, "output.log")
	inNamespace := func(args ...string) error {
		argv := append([]string{"--target", strconv.Itoa(s.pid), "--pid", "--mount", "--",
			"setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"}, args...)
		cmd := exec.Command("nsenter", argv...)
		cmd.Dir = scratch
		out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			b, _ := os.ReadFile(outPath)
			return fmt.Errorf("%v: %v\n%s", args, err, b)
		}
		return nil
	}
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGINT} {
		pdir := filepath.Join(scratch, fmt.Sprintf("prefetch-%d", i))
		if err := inNamespace(harness.KcbackupBinary(t), "wal-fetch", "--storage", url, "--prefetch", "2",
			"--prefetch-dir", pdir, seg, filepath.Join(scratch, fmt.Sprintf("fetched-%d", i))); err != nil {
			t.Fatalf("wal-fetch in the namespace: %v", err)
		}
		// Signalled once it runs: it has prefetched a segment (the Go runtime's first
		// milliseconds, before kcbackup's handlers are in place, are the window the
		// prefetcher's documentation leaves open, with SIGKILL).
		pid := 0
		waitFor(t, 10*time.Second, "the prefetcher, reparented to the postmaster, to prefetch a segment", func() bool {
			pid = findProcess("--prefetch-worker", pdir)
			return pid > 0 && procParent(pid) == s.pid && holdsSegment(pdir)
		})
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("the prefetcher sent %v to be reaped", sig), func() bool { return procParent(pid) == 0 })
	}

	// Step 3: a prefetcher that fails (its archive cannot be opened), orphaned in the
	// namespace as wal-fetch leaves it.
	missing := "file://" + filepath.Join(scratch, "no-archive")
	if err := inNamespace("sh", "-c", `"$0" wal-fetch --prefetch-worker --storage "$1" --prefetch 2 --prefetch-dir "$2" "$3" - &`,
		harness.KcbackupBinary(t), missing, filepath.Join(scratch, "prefetch-fails"), seg); err != nil {
		t.Fatalf("start a failing prefetcher: %v", err)
	}
	waitFor(t, 30*time.Second, "the failing prefetcher's error, and the postmaster reaping it", func() bool {
		out, _ := os.ReadFile(outPath)
		return bytes.Contains(out, []byte("no-archive")) && findProcess("--prefetch-worker", "prefetch-fails") == 0 &&
			!hasZombieChild(s.pid)
	})

	// Step 4: the postmaster reaped every one of them and restarted nothing.
	log, _ := os.ReadFile(s.logPath)
	for _, crash := range []string{"terminating any other active server processes", "was terminated by signal",
		"exited with exit code", "all server processes terminated; reinitializing"} {
		if bytes.Contains(log, []byte(crash)) {
			t.Errorf("the server log says %q: the postmaster took a prefetcher for a crashed backend", crash)
		}
	}
	if got := s.query(t, conn, "SELECT pg_backend_pid()"); got != backend {
		t.Errorf("backend PID %s became %s", backend, got)
	}
	if got := s.query(t, conn, "SELECT pg_postmaster_start_time()"); got != started {
		t.Errorf("pg_postmaster_start_time %s became %s", started, got)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", s.pid)); err != nil {
		t.Errorf("the postmaster is gone: %v", err)
	}
}

// firstSegment returns the name of the first complete segment of timeline 1 in the archive.
func firstSegment(t *testing.T, url string) string {
	t.Helper()
	a := openArchive(t, url)
	objs, err := a.Storage.List(context.Background(), walarchive.TimelineDir(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if name := filepath.Base(o.Key); walarchive.IsSegmentName(name) {
			return name
		}
	}
	t.Fatalf("no complete segment in %s", url)
	return ""
}

// A wal-fetch killed in the middle of a download leaves its temporary file beside the
// destination; the next wal-fetch there removes it.
func TestWALFetchKilledMidDownloadLeavesNoTempFileAfterTheNext(t *testing.T) {
	_, url := archivedWithBackup(t)
	seg := firstSegment(t, url)
	a := openArchive(t, url)
	objs, err := a.Storage.List(context.Background(), walarchive.TimelineDir(1))
	if err != nil {
		t.Fatal(err)
	}
	var object string
	for _, o := range objs {
		if filepath.Base(o.Key) == seg {
			object = filepath.Join(strings.TrimPrefix(url, "file://"), o.Key)
		}
	}
	data, err := os.ReadFile(object)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(object)
	// The stored object becomes a pipe that delivers half of it, then stalls.
	if err := os.Remove(object); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(object, 0o644); err != nil {
		t.Fatal(err)
	}
	stalled := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(object, os.O_WRONLY, 0)
		if err == nil {
			f.Write(data[:len(data)/2])
		}
		stalled <- f
	}()

	dest := t.TempDir()
	fetch := func() *exec.Cmd {
		return exec.Command(harness.KcbackupBinary(t), "wal-fetch", "--storage", url, "--retry-for", "10s", seg, filepath.Join(dest, "RECOVERYXLOG"))
	}
	killed := fetch()
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	f := <-stalled // the reader has the first half
	waitFor(t, 30*time.Second, "wal-fetch's temporary file", func() bool { return len(fetchTempFiles(t, dest)) == 1 })
	killed.Process.Signal(syscall.SIGKILL)
	killed.Wait()
	if f != nil {
		f.Close()
	}
	left := fetchTempFiles(t, dest)
	if len(left) != 1 {
		t.Fatalf("after the kill %s holds temporary files %v; want the killed fetch's", dest, left)
	}
	t.Logf("the killed wal-fetch left %s", left[0])

	// The object is whole again; the next wal-fetch into the same directory.
	os.Remove(object)
	if err := os.WriteFile(object, data, st.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	if out, err := fetch().CombinedOutput(); err != nil {
		t.Fatalf("the next wal-fetch: %v\n%s", err, out)
	}
	if got, err := os.Stat(filepath.Join(dest, "RECOVERYXLOG")); err != nil || got.Size() != int64(a.SegmentSize()) {
		t.Fatalf("the next wal-fetch wrote %v, %v; want a whole segment", got, err)
	}
	if left := fetchTempFiles(t, dest); len(left) != 0 {
		t.Fatalf("after the next wal-fetch %s still holds temporary files %v", dest, left)
	}
}

// fetchTempFiles lists wal-fetch's temporary files in dir.
func fetchTempFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".kcbackup-fetch-") {
			out = append(out, e.Name())
		}
	}
	return out
}
