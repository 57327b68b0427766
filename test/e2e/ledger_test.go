package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// ledger inserts one row per transaction, continuously, and remembers when each insert was
// acknowledged, so the exact set of rows committed at or before any time is known.
type ledger struct {
	mu    sync.Mutex
	acked []ledgerRow
	stop  chan struct{}
	done  chan error
}

type ledgerRow struct {
	id int64
	at time.Time
}

func createLedger(t *testing.T, pg *harness.Postgres) {
	exec1(t, pg, "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text NOT NULL)")
}

// waitAcked waits until the ledger has n acknowledged rows, or fails when it stopped.
func (l *ledger) waitAcked(t *testing.T, n int) {
	t.Helper()
	for {
		l.mu.Lock()
		got := len(l.acked)
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case err := <-l.done:
			t.Fatalf("the ledger stopped after %d of %d rows: %v", got, n, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func startLedger(t *testing.T, pg *harness.Postgres) *ledger {
	t.Helper()
	l := &ledger{stop: make(chan struct{}), done: make(chan error, 1)}
	conn, err := pgx.Connect(context.Background(), pg.ConnString("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer conn.Close(context.Background())
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				l.done <- nil
				return
			default:
			}
			var id int64
			err := conn.QueryRow(context.Background(), "INSERT INTO ledger (note) VALUES ($1) RETURNING id", "row "+strconv.Itoa(i)).Scan(&id)
			if err != nil {
				l.done <- err
				return
			}
			l.mu.Lock()
			l.acked = append(l.acked, ledgerRow{id, time.Now()})
			l.mu.Unlock()
			if i%4 == 0 {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()
	return l
}

// Stop ends the inserts; err is what ended them (nil when stopped).
func (l *ledger) Stop() error {
	close(l.stop)
	return <-l.done
}

func (l *ledger) ackedBefore(t time.Time) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []int64
	for _, r := range l.acked {
		if r.at.Before(t) {
			ids = append(ids, r.id)
		}
	}
	return ids
}

// ledgerState summarizes the rows committed at or before T on the primary (by commit timestamp).
func ledgerStateAt(t *testing.T, pg *harness.Postgres, target time.Time) string {
	return query(t, pg, fmt.Sprintf(`SELECT count(*) || '/' || coalesce(sum(id),0) || '/' || coalesce(max(id),0) FROM ledger
		WHERE pg_xact_commit_timestamp(xmin) <= '%s'::timestamptz`, target.UTC().Format("2006-01-02 15:04:05.999999Z07:00")))
}

func ledgerState(t *testing.T, pg *harness.Postgres) string {
	return query(t, pg, `SELECT count(*) || '/' || coalesce(sum(id),0) || '/' || coalesce(max(id),0) FROM ledger`)
}

// restoreAndStart restores the archive to target into a fresh directory and starts
// PostgreSQL on it, waiting for recovery to finish and the server to promote.
func restoreAndStart(t *testing.T, env []string, url, target string, extra ...string) (*harness.Postgres, string) {
	t.Helper()
	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "pgdata")
	args := append([]string{"restore", "--storage", url, "--pgdata", dir, "--to", target, "--owner", "postgres"}, extra...)
	stdout, stderr, code := harness.Kcbackup(t, context.Background(), env, args...)
	if code != 0 {
		t.Fatalf("kcbackup restore --to %s exited %d: %s", target, code, stderr)
	}
	pg := harness.StartFromDataDir(t, dir, harness.PGOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := pg.WaitPromoted(ctx); err != nil {
		t.Fatalf("restored server did not promote: %v\n%s", err, pg.Log())
	}
	return pg, strings.TrimSpace(stdout)
}

func TestRestoreToRandomTargetsHoldsExactlyTheRowsCommittedByThen(t *testing.T) {
	harness.ForEachPGVersion(t, testRestoreToRandomTargetsHoldsExactlyTheRowsCommittedByThen)
}

func testRestoreToRandomTargetsHoldsExactlyTheRowsCommittedByThen(t *testing.T, version int) {
	ctx := context.Background()
	pg := harness.StartPostgres(t, pgSettingsOn(version, nil))
	url := fileArchive(t)
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	createLedger(t, pg)
	if _, err := pg.Pgbench(ctx, "-i", "-s", "1"); err != nil {
		t.Fatal(err)
	}
	id, stderr, code := harness.Kcbackup(t, ctx, pg.Env(), "backup", "--storage", url)
	if code != 0 {
		t.Fatalf("backup exited %d: %s", code, stderr)
	}
	t.Logf("backup %s", strings.TrimSpace(id))

	// Step 1: ledger inserts and pgbench together for a few seconds.
	l := startLedger(t, pg)
	bench := make(chan error, 1)
	go func() { _, err := pg.Pgbench(ctx, "-T", "6", "-c", "2"); bench <- err }()
	time.Sleep(6500 * time.Millisecond)
	// Step 3 checks the WAL scanner against at least 1000 commits: on a loaded machine the
	// ledger goes on past the load until it has them.
	l.waitAcked(t, 1000)
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-bench; err != nil {
		t.Fatal(err)
	}
	flush := lsn(t, query(t, pg, "SELECT pg_current_wal_flush_lsn()"))
	waitArchived(t, sc, flush, 30*time.Second)

	// Step 2: targets spread over the load, at microsecond precision, exact commit
	// timestamps among them (inclusive bound).
	l.mu.Lock()
	first, last := l.acked[0].at, l.acked[len(l.acked)-1].at
	l.mu.Unlock()
	var targets []time.Time
	for _, frac := range []float64{0.1, 0.33, 0.5, 0.77, 0.95} {
		targets = append(targets, first.Add(time.Duration(frac*float64(last.Sub(first)))).Truncate(time.Microsecond))
	}
	ts := query(t, pg, "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM ledger ORDER BY id OFFSET 100 LIMIT 1")
	exact, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatal(err)
	}
	targets = append(targets, exact)

	for _, target := range targets {
		want := ledgerStateAt(t, pg, target)
		restored, _ := restoreAndStart(t, nil, url, target.Format(time.RFC3339Nano))
		got := ledgerState(t, restored)
		if got != want {
			t.Errorf("restore to %s: ledger count/sum/max = %s; want %s", target.Format(time.RFC3339Nano), got, want)
		} else {
			t.Logf("restore to %s: ledger %s as on the primary", target.Format(time.RFC3339Nano), got)
		}
		restored.Stop(ctx, "fast")
	}

	// Step 3: the WAL scanner finds every ledger commit, at its exact commit timestamp.
	a := openArchive(t, url)
	p, err := a.Path(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	backups, _, _ := a.Backups(ctx)
	firstSeg := backups[0].StartLSN.SegmentNo(a.SegmentSize())
	end, err := a.WALReach(ctx, p, firstSeg)
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	for n := firstSeg; n <= end.LastSegment; n++ {
		if _, err := a.FetchWALFile(ctx, walarchive.SegmentName(1, n, a.SegmentSize()), &stream); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	streamLen := stream.Len()
	v, err := walarchive.LookupPGVersion(a.Identity.PostgresVersion)
	if err != nil {
		t.Fatal(err)
	}
	if scanEnd, err := walarchive.ScanXacts(&stream, v, firstSeg, a.SegmentSize(), func(x walarchive.XactRecord) {
		if x.Commit {
			seen[x.Time.UTC().Format("2006-01-02T15:04:05.000000Z")] = true
		}
	}); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("scanned %d bytes of WAL from segment %d to %s: %d commits", streamLen, firstSeg, scanEnd, len(seen))
	}
	stamps := strings.Split(query(t, pg, `SELECT string_agg(to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ',') FROM ledger`), ",")
	missing := 0
	for _, ts := range stamps {
		if !seen[ts] {
			missing++
		}
	}
	if missing > 0 || len(stamps) < 1000 {
		t.Fatalf("the WAL scanner missed %d of %d ledger commits", missing, len(stamps))
	}

	// Step 4: the window ends at the last archived transaction (the archive holds every
	// commit, so at the last one), and a target there replays everything and promotes,
	// instead of failing with "recovery ended before the target".
	out, stderr, code := harness.Kcbackup(t, ctx, nil, "list", "--storage", url, "--json")
	if code != 0 {
		t.Fatalf("list: %s", stderr)
	}
	var cat apiclient.Catalog
	harness.DecodeJSON(t, out, &cat)
	if cat.Window == nil || len(cat.Backups) != 1 {
		t.Fatalf("list --json = %s", out)
	}
	lastCommit := lastCommitTime(t, pg)
	if cat.Window.Latest.Before(lastCommit) {
		t.Fatalf("window end %s is before the last commit %s, which is archived", cat.Window.Latest, lastCommit)
	}
	restored, _ := restoreAndStart(t, nil, url, cat.Window.Latest.Format(time.RFC3339Nano))
	if got, want := ledgerState(t, restored), ledgerState(t, pg); got != want {
		t.Fatalf("restore to the window's end: ledger %s; want %s", got, want)
	}
}

func lastCommitTime(t *testing.T, pg *harness.Postgres) time.Time {
	ts := query(t, pg, `SELECT to_char(max(pg_xact_commit_timestamp(xmin)) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM ledger`)
	v, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
