package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// env holds what every phase shares: the configuration, the kcbackup binary and MinIO.
type env struct {
	ctx   context.Context
	cfg   Config
	bin   string
	minio *harness.MinIO
	// store is the latency proxy every S3 client of the run reaches MinIO through; its
	// round trip is 0 except where a phase sets it.
	store *latencyProxy

	// catchupURL is the archive the catch-up phase filled; the wal-fetch phase reads it.
	catchupURL string
	// defaultInterval is kcbackup run's default --partial-interval, from its --help.
	defaultInterval time.Duration
}

// newEnv builds kcbackup, starts MinIO and points this process's environment (inherited by
// the PostgreSQL servers, hence by restore_command) at MinIO.
func newEnv(ctx context.Context, root *benchTB, cfg Config) (*env, error) {
	progress("building kcbackup")
	bin := harness.KcbackupBinary(root)
	root.Cleanup(func() { os.RemoveAll(filepath.Dir(bin)) })
	progress("starting MinIO")
	m := harness.StartMinIO(root)
	proxy, err := startLatencyProxy(strings.TrimPrefix(m.Endpoint(), "http://"))
	if err != nil {
		return nil, fmt.Errorf("start the latency proxy: %w", err)
	}
	root.Cleanup(func() { proxy.Close() })
	for _, kv := range append(m.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true", "AWS_ENDPOINT_URL_S3=http://"+proxy.Addr()) {
		k, v, _ := strings.Cut(kv, "=")
		root.Setenv(k, v)
	}
	e := &env{ctx: ctx, cfg: cfg, bin: bin, minio: m, store: proxy}
	if e.defaultInterval, err = e.kcbackupDefaultInterval(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// withRTT runs f with the store's round trip set to rtt, then sets it back to 0.
func (e *env) withRTT(rtt time.Duration, f func() error) error {
	e.store.SetRTT(rtt)
	defer e.store.SetRTT(0)
	return f()
}

// newArchive creates a fresh bucket and returns an s3:// storage URL in it.
func (e *env) newArchive(t *benchTB, prefix string) string {
	return "s3://" + e.minio.NewBucket(t) + "/" + prefix
}

// startCluster starts a fresh cluster, initialises pgbench at scale and checkpoints, so
// the load that follows starts from a clean state.
func (e *env) startCluster(t *benchTB, scale int, settings map[string]string) *harness.Postgres {
	pg := harness.StartPostgres(t, harness.PGOptions{Settings: settings})
	progress("%s: pgbench -i -s %d on port %d", t.Name(), scale, pg.Port())
	if out, err := pg.Pgbench(e.ctx, "-i", "-q", "-s", strconv.Itoa(scale)); err != nil {
		t.Fatalf("initialise pgbench: %v\n%s", err, out)
	}
	if err := pg.Exec(e.ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	return pg
}

// startSidecar starts `kcbackup run` against pg, archiving to url, with -partial-interval.
func (e *env) startSidecar(t *benchTB, pg *harness.Postgres, url string) *harness.Sidecar {
	return e.startSidecarInterval(t, pg, url, e.cfg.PartialInterval)
}

// startSidecarInterval starts `kcbackup run` against pg, archiving to url, with
// --partial-interval interval (negative: kcbackup's default).
func (e *env) startSidecarInterval(t *benchTB, pg *harness.Postgres, url string, interval time.Duration) *harness.Sidecar {
	args := []string{"--log-level", "info"}
	if interval >= 0 {
		args = append(args, "--partial-interval", interval.String())
	}
	return harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: args})
}

var tpsPattern = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbench runs the TPC-B-like load for d (or until ctx ends) and returns its TPS.
func (e *env) pgbench(ctx context.Context, pg *harness.Postgres, d time.Duration) (float64, error) {
	secs := strconv.Itoa(int(d.Round(time.Second) / time.Second))
	out, err := pg.Pgbench(ctx, "-c", strconv.Itoa(e.cfg.Clients), "-j", strconv.Itoa(e.cfg.Jobs), "-T", secs)
	if err != nil {
		return 0, err
	}
	m := tpsPattern.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no TPS:\n%s", out)
	}
	return strconv.ParseFloat(m[1], 64)
}

// walFillScript is the pgbench script generateWAL runs: bulk inserts of random hex text,
// which write WAL about a hundred times faster than the TPC-B-like script on this kind of
// machine and compress about as well as text columns do.
const walFillScript = "INSERT INTO bench_walfill SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, 2000);\n"

// generateWAL runs pgbench with walFillScript until the server has written at least n
// bytes of WAL past its current position, and returns the start and end positions.
func (e *env) generateWAL(t *benchTB, pg *harness.Postgres, n int64) (walarchive.LSN, walarchive.LSN, error) {
	if err := pg.Exec(e.ctx, "CREATE TABLE IF NOT EXISTS bench_walfill (v text)"); err != nil {
		return 0, 0, err
	}
	script := filepath.Join(t.TempDir(), "walfill.sql")
	if err := os.WriteFile(script, []byte(walFillScript), 0o644); err != nil {
		return 0, 0, fmt.Errorf("write the pgbench script: %w", err)
	}
	start, err := currentLSN(e.ctx, pg)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := pg.Pgbench(ctx, "-n", "-f", script, "-c", strconv.Itoa(e.cfg.Clients), "-j", strconv.Itoa(e.cfg.Jobs), "-T", "36000")
		done <- err
	}()
	began := time.Now()
	lastReport := began
	for {
		select {
		case err := <-done:
			return 0, 0, fmt.Errorf("pgbench ended before %d MiB of WAL: %v", n>>20, err)
		case <-time.After(500 * time.Millisecond):
		}
		cur, err := currentLSN(e.ctx, pg)
		if err != nil {
			return 0, 0, err
		}
		if int64(cur-start) >= n {
			break
		}
		if time.Since(lastReport) > 15*time.Second {
			lastReport = time.Now()
			progress("%s: %d of %d MiB of WAL generated", t.Name(), int64(cur-start)>>20, n>>20)
		}
	}
	cancel()
	<-done // cancelled: its error is expected
	end, err := currentLSN(e.ctx, pg)
	if err != nil {
		return 0, 0, err
	}
	progress("%s: generated %d MiB of WAL in %s", t.Name(), int64(end-start)>>20, time.Since(began).Round(time.Second))
	return start, end, nil
}

// currentLSN returns pg_current_wal_lsn().
func currentLSN(ctx context.Context, pg *harness.Postgres) (walarchive.LSN, error) {
	s, err := pg.QueryString(ctx, "SELECT pg_current_wal_lsn()")
	if err != nil {
		return 0, err
	}
	return walarchive.ParseLSN(s)
}

// archivedLSN returns the sidecar's archivedLSN, 0 when nothing is archived yet.
func archivedLSN(ctx context.Context, sc *harness.Sidecar) (walarchive.LSN, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := sc.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("sidecar status: %w", err)
	}
	if st.ArchivedLSN == "" {
		return 0, nil
	}
	return walarchive.ParseLSN(st.ArchivedLSN)
}

// waitArchived polls the sidecar every 100 ms until archivedLSN >= target and returns
// how long that took.
func waitArchived(ctx context.Context, sc *harness.Sidecar, target walarchive.LSN, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var last walarchive.LSN
	for time.Since(start) < timeout {
		if l, err := archivedLSN(ctx, sc); err == nil {
			last = l
			if l >= target {
				return time.Since(start), nil
			}
		}
		if sc.Exited() {
			return 0, fmt.Errorf("the sidecar exited while waiting for %s:\n%s", target, tailLines(sc.Log(), 20))
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("archivedLSN %s did not reach %s within %s", last, target, timeout)
}

// waitPromoted waits up to timeout for the end of recovery (pg_is_in_recovery() false).
// The harness's WaitPromoted stops after two minutes, too short for a large replay.
func waitPromoted(ctx context.Context, pg *harness.Postgres, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = pg.WaitPromoted(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil || strings.Contains(err.Error(), "server exited") || strings.Contains(err.Error(), "not running") {
			return err
		}
	}
	return fmt.Errorf("recovery did not end within %s: %w", timeout, err)
}

// command runs a program with extra environment and returns its combined output.
func command(ctx context.Context, extraEnv []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, tailLines(out.String(), 10))
	}
	return out.String(), nil
}

// kcbackup runs the kcbackup binary and returns its stdout.
func (e *env) kcbackup(ctx context.Context, extraEnv []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kcbackup %s: %w: %s", strings.Join(args, " "), err, tailLines(errb.String(), 10))
	}
	return out.String(), nil
}

// postgresOwner returns the uid and gid of the postgres OS user the servers run as when
// this program runs as root, or -1, -1 otherwise.
func postgresOwner() (int, int, error) {
	if os.Geteuid() != 0 {
		return -1, -1, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return 0, 0, fmt.Errorf("look up the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// serverDir creates a directory the postgres user owns (for archive_command), in a fresh
// temporary directory.
func serverDir(t *benchTB, name string) string {
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("create %s: %v", dir, err)
	}
	uid, gid, err := postgresOwner()
	if err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("chown %s: %v", dir, err)
		}
	}
	return dir
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
