package history

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// Timeouts. Where the product has its own, the checker's wait is derived from it.
const (
	// walFetchRetryFor is `kcbackup wal-fetch --retry-for`'s default: recovery may wait this
	// long on one segment before failing, so a restore's promotion wait is longer.
	walFetchRetryFor = 2 * time.Minute
	promoteTimeout   = walFetchRetryFor + time.Minute
	// backupWALTimeout is passed as `kcbackup backup --wal-timeout`.
	backupWALTimeout = 5 * time.Minute
	// cliTimeout bounds list, verify, prune and restore (which extracts a small cluster).
	cliTimeout = 5 * time.Minute
	// catchUpTimeout bounds how long a quiet archive may take to hold the server's WAL.
	catchUpTimeout = 3 * time.Minute
	// sidecarReady is how long a (re)started sidecar may take to answer /readyz.
	sidecarReady = time.Minute
	// storeDownCommitWait bounds the wait for a synchronous commit with the store down.
	storeDownCommitWait = 15 * time.Second
	// writeTimeout bounds a write step of up to 200 rows (synchronous commits included).
	writeTimeout = 3 * time.Minute
)

// failure is a broken invariant.
type failure struct {
	Invariant string
	Detail    string
}

func (f *failure) Error() string { return f.Invariant + ": " + f.Detail }

func fail(invariant, format string, args ...any) error {
	return &failure{Invariant: invariant, Detail: fmt.Sprintf(format, args...)}
}

// world is one history: the cluster, its sidecar, the archive and the model.
type world struct {
	t     *testing.T
	ctx   context.Context
	plan  plan
	url   string
	env   []string // storage credentials for kcbackup commands
	minio *harness.MinIO
	pg    *harness.Postgres
	sc    *harness.Sidecar
	m     *model
	notes int
	log   []string // what each step did, for the failure report
	found map[string]bool
	// step is the step running (-1: setup); report records a failure of it.
	step   int
	report func(i int, err error)
	// arch is the archive opened in this process (see archive), for the checks that read
	// it directly.
	arch *walarchive.Archive
	// tally counts what ran, for the soak report.
	tally tally
}

// pgOptions are test/e2e's archiving settings (1 MiB segments, commit timestamps).
func (w *world) pgOptions() harness.PGOptions {
	s := map[string]string{
		"wal_keep_size":          "512MB",
		"track_commit_timestamp": "on",
		"checkpoint_timeout":     "30s",
		"max_wal_size":           "64MB",
	}
	if w.plan.Config.Sync {
		s["synchronous_standby_names"] = "kcbackup"
		s["synchronous_commit"] = w.plan.Config.Commit
	}
	return harness.PGOptions{WALSegmentSizeMB: 1, Settings: s, Version: w.plan.Config.PG}
}

func (w *world) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	w.log = append(w.log, line)
	w.t.Log(line)
}

func (w *world) nextNote() string {
	w.notes++
	return fmt.Sprintf("s%d-r%06d", w.plan.Seed, w.notes)
}

// setup starts the archive, the cluster and its sidecar, writes the first rows and takes
// the first backup.
func (w *world) setup() error {
	if w.plan.Config.Storage == "s3" {
		w.minio = harness.StartMinIO(w.t)
		w.env = append(w.minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
		w.url = "s3://" + w.minio.NewBucket(w.t) + "/history"
		for _, kv := range w.env { // restore_command runs in the server's environment
			k, v, _ := strings.Cut(kv, "=")
			w.t.Setenv(k, v)
		}
	} else {
		w.url = "file://" + harness.FileArchiveDir(w.t)
	}
	if w.plan.Config.Compat != "" {
		// The sidecar and every kcbackup command, not this process (see checkImmutable).
		w.env = append(w.env, "KCBACKUP_STORAGE_COMPAT="+w.plan.Config.Compat)
	}
	w.pg = harness.StartPostgres(w.t, w.pgOptions())
	if err := w.startSidecar(w.pg); err != nil {
		return err
	}
	if err := w.pg.Exec(w.ctx, "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text NOT NULL UNIQUE); CREATE TABLE filler (n int, pad text)"); err != nil {
		return err
	}
	if err := w.write(30); err != nil {
		return err
	}
	return w.backup()
}

func (w *world) startSidecar(pg *harness.Postgres, extraEnv ...string) error {
	env := append(append([]string{}, w.env...), extraEnv...)
	w.sc = harness.StartSidecar(w.t, pg, harness.SidecarOptions{Storage: w.url, Env: env, NoWait: true, Args: []string{"--partial-interval", w.plan.Config.Partial}})
	return w.waitReady()
}

// archive opens the archive in this process, as it is (conditional writes as the store
// does them: KCBACKUP_STORAGE_COMPAT is never set in this process).
func (w *world) archive() (*walarchive.Archive, error) {
	if w.arch != nil {
		return w.arch, nil
	}
	st, err := walarchive.OpenStorage(w.ctx, w.url)
	if err != nil {
		return nil, fmt.Errorf("open the archive %s: %w", w.url, err)
	}
	if w.arch, err = walarchive.OpenArchive(w.ctx, st, nil); err != nil {
		return nil, fmt.Errorf("open the archive %s: %w", w.url, err)
	}
	return w.arch, nil
}

// waitReady waits until the sidecar answers /readyz with 200.
func (w *world) waitReady() error {
	deadline := time.Now().Add(sidecarReady)
	client := &http.Client{Timeout: 5 * time.Second}
	last := ""
	for time.Now().Before(deadline) {
		resp, err := client.Get(w.sc.URL() + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s %s", resp.Status, strings.TrimSpace(string(body)))
		}
		if w.sc.Exited() {
			return fail("archiving: the sidecar runs", "the sidecar exited:\n%s", tailLines(w.sc.Log(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fail("archiving: the sidecar becomes ready", "not ready after %s (last answer %q):\n%s", sidecarReady, last, tailLines(w.sc.Log(), 20))
}

// kcbackup runs a kcbackup command with the storage credentials.
func (w *world) kcbackup(timeout time.Duration, extraEnv []string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	return harness.Kcbackup(w.t, ctx, append(append([]string{}, w.env...), extraEnv...), args...)
}

func (w *world) catalog() (catalog, error) {
	out, stderr, code := w.kcbackup(cliTimeout, nil, "list", "--storage", w.url, "--json")
	if code != 0 {
		return catalog{}, fail("list: the catalog reads the archive", "list --json exited %d: %s", code, strings.TrimSpace(stderr))
	}
	c, err := parseCatalog([]byte(out))
	if err == nil && len(c.Inverted) > 0 {
		w.finding(fail("window: a reported range never ends before it starts", "list --json reports %v (backups %s)", c.Inverted, backupIDs(c.Backups)))
	}
	return c, err
}

// finding records a broken invariant that does not stop the history (the first of each
// kind per history): the test fails, and the history goes on to find more.
func (w *world) finding(err error) {
	var f *failure
	if !errors.As(err, &f) {
		f = &failure{Invariant: "finding", Detail: err.Error()}
	}
	if w.found == nil {
		w.found = map[string]bool{}
	}
	if w.found[f.Invariant] {
		return
	}
	w.found[f.Invariant] = true
	w.report(w.step, err)
}

// write adds n acknowledged rows on the live timeline.
func (w *world) write(n int) error {
	wr, err := startWriter(w.ctx, w.pg, w.nextNote, n)
	if err != nil {
		return err
	}
	werr := wr.waitCount(n, writeTimeout)
	wr.finish()
	return w.settle(wr, werr)
}

// settle adds a finished writer's rows to the model.
func (w *world) settle(wr *writer, werr error) error {
	rows, err := wr.resolve(w.ctx, w.pg)
	if err != nil {
		return err
	}
	w.m.add(rows)
	return werr
}

func (w *world) backup() error {
	out, stderr, code := w.kcbackup(backupWALTimeout+time.Minute, w.pg.Env(), "backup", "--storage", w.url, "--wal-timeout", backupWALTimeout.String())
	if code != 0 {
		return fail("backup", "kcbackup backup exited %d: %s", code, stderr)
	}
	w.logf("  backup %s", strings.TrimSpace(out))
	return nil
}

func (w *world) query(sql string) (string, error) { return w.pg.QueryString(w.ctx, sql) }

func (w *world) exec(sql string) error { return w.pg.Exec(w.ctx, sql) }

func (w *world) flushLSN() (walarchive.LSN, error) {
	s, err := w.query("SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		return 0, err
	}
	return walarchive.ParseLSN(s)
}

// timeline returns the server's current timeline (after a checkpoint, which records it).
func (w *world) timeline(pg *harness.Postgres) (uint32, error) {
	if err := pg.Exec(w.ctx, "CHECKPOINT"); err != nil {
		return 0, err
	}
	s, err := pg.QueryString(w.ctx, "SELECT timeline_id FROM pg_control_checkpoint()")
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

// historyOf reads timeline tli's history file from the server's pg_wal. It is parsed as
// PostgreSQL reads it (timeline.c readTimeLineHistory): timelines increase, switch points
// need not, since a restore along a timeline to a point before its branch writes the
// target timeline's history followed by an earlier switch point.
func historyOf(ctx context.Context, pg *harness.Postgres, tli uint32) (walarchive.TimelineHistory, error) {
	if tli == 1 {
		return nil, nil
	}
	s, err := pg.QueryString(ctx, fmt.Sprintf("SELECT pg_read_file('pg_wal/%08X.history')", tli))
	if err != nil {
		return nil, err
	}
	var h walarchive.TimelineHistory
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		parent, err1 := strconv.ParseUint(f[0], 10, 32)
		lsn, err2 := walarchive.ParseLSN(f[1])
		if err1 != nil || err2 != nil || (len(h) > 0 && uint32(parent) <= h[len(h)-1].Parent) {
			return nil, fmt.Errorf("history of timeline %d: bad line %q", tli, line)
		}
		h = append(h, walarchive.TimelineSwitch{Parent: uint32(parent), SwitchPoint: lsn})
	}
	return h, nil
}

// waitArchived waits until the sidecar archives the live timeline up to the server's
// current flush position.
func (w *world) waitArchived() error {
	flush, err := w.flushLSN()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(catchUpTimeout)
	var last string
	for time.Now().Before(deadline) {
		st, err := w.sc.Status(w.ctx)
		if err == nil {
			last = fmt.Sprintf("timeline %d archived %q storageUp %v streaming %v", st.Timeline, st.ArchivedLSN, st.StorageUp, st.Streaming)
			if l, perr := walarchive.ParseLSN(st.ArchivedLSN); perr == nil && st.Timeline == w.m.Live && l >= flush {
				return nil
			}
		}
		if w.sc.Exited() {
			return fail("archiving", "the sidecar exited:\n%s", tailLines(w.sc.Log(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fail("archiving", "the archive did not reach the server's flush position %s on timeline %d within %s (%s)\n%s", flush, w.m.Live, catchUpTimeout, last, tailLines(w.sc.Log(), 30))
}

// restoreLedger restores into a new directory, starts PostgreSQL on it and returns its
// ledger; code and stderr are the restore's when it was refused (code > 0) or when the
// restored server did not start or finish recovery (code -1). The server runs in a subtest,
// so that a start the harness gives up on fails that subtest and the history reports it.
func (w *world) restoreLedger(to string, args ...string) (map[string]time.Time, int, string, error) {
	parent, err := os.MkdirTemp("", "kcbackup-history-restore-")
	if err != nil {
		return nil, 0, "", err
	}
	defer os.RemoveAll(parent)
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "pgdata")
	all := append([]string{"restore", "--storage", w.url, "--pgdata", dir, "--to", to, "--owner", "postgres"}, args...)
	_, stderr, code := w.kcbackup(cliTimeout, nil, all...)
	if code != 0 {
		return nil, code, stderr, nil
	}
	var got map[string]time.Time
	var why string
	ok := w.t.Run("restored", func(t *testing.T) {
		pg := harness.StartFromDataDir(t, dir, harness.PGOptions{})
		defer pg.Stop(context.Background(), "immediate")
		ctx, cancel := context.WithTimeout(w.ctx, promoteTimeout)
		defer cancel()
		if err := pg.WaitPromoted(ctx); err != nil {
			why = fmt.Sprintf("restored server did not finish recovery: %v\n%s", err, tailLines(pg.Log(), 25))
			t.Error(why)
			return
		}
		if got, err = readLedger(w.ctx, pg); err != nil {
			why = err.Error()
			t.Error(why)
		}
	})
	if !ok {
		if why == "" {
			why = "the restored server did not start (its log is in the subtest's output above)"
		}
		return nil, -1, why, nil
	}
	return got, 0, "", nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
