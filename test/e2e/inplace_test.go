package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// assertAckNotAheadOfArchive checks RELIABILITY 2 by exact keys: the WAL up to what the
// sidecar acknowledges now (its walsender's flush position) is in the archive along the
// current timeline. (A slot the sidecar just created reserves WAL from the
// server's insert position: its restart_lsn is no acknowledgement until the sidecar's
// feedback moves it.) Nothing is checked while the sidecar has not reported one.
func assertAckNotAheadOfArchive(t *testing.T, pg *harness.Postgres, url string) {
	t.Helper()
	v := query(t, pg, "SELECT coalesce(max(flush_lsn)::text, '') FROM pg_stat_replication WHERE application_name = 'kcbackup'")
	if v == "" {
		return
	}
	assertNotAheadOfArchive(t, pg, url, lsn(t, v))
}

// assertNotAheadOfArchive checks that the WAL up to restart (a position acknowledged to
// the server) is in the archive along the current timeline.
func assertNotAheadOfArchive(t *testing.T, pg *harness.Postgres, url string, restart walarchive.LSN) {
	t.Helper()
	ctx := context.Background()
	exec1(t, pg, "CHECKPOINT")
	tli := uint32(0)
	if v := query(t, pg, "SELECT timeline_id FROM pg_control_checkpoint()"); v == "2" {
		tli = 2
	} else {
		tli = 1
	}
	a := openArchive(t, url)
	if tli == 2 {
		if _, err := a.Storage.Stat(ctx, walarchive.HistoryKey(2)); err != nil {
			// The restored server promoted, but its sidecar has not taken the hand-over yet:
			// nothing of timeline 2 is archived or acknowledged, and the slot, created during
			// recovery, must hold WAL from timeline 1's archived part.
			end, _, err := a.TimelineEnd(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if restart > end {
				t.Fatalf("before timeline 2 is archived the slot holds WAL only from %s, past timeline 1's archived end %s", restart, end)
			}
			return
		}
	}
	p, err := a.Path(ctx, tli)
	if err != nil {
		t.Fatal(err)
	}
	seg := a.SegmentSize()
	n := restart.SegmentNo(seg)
	if restart.SegmentOffset(seg) == 0 {
		return // nothing of this segment was acknowledged
	}
	owner := p.TimelineOfSegment(n)
	if _, err := a.Storage.Stat(ctx, walarchive.SegmentKey(owner, n, seg)); err == nil {
		return
	}
	tail, err := a.ListTail(ctx, owner, n)
	if err != nil {
		t.Fatal(err)
	}
	if tail.Complete {
		return
	}
	_, got := tail.Run()
	if end := walarchive.SegmentStartLSN(n, seg) + walarchive.LSN(got); end < restart {
		t.Fatalf("the slot was acknowledged up to %s but the archive holds timeline %d's segment %d only up to %s", restart, owner, n, end)
	}
}

func TestInPlaceRestoreWithTheSidecarRunningNeverAcknowledgesUnarchivedWAL(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(nil))
	// A long partial interval: WAL waits seconds for the archive, so acknowledging it early
	// would be seen.
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "5s"}})
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	exec1(t, pg, "INSERT INTO ledger (note) SELECT 'before t1' FROM generate_series(1, 100)")
	time.Sleep(100 * time.Millisecond)
	t1 := time.Now().UTC()
	time.Sleep(100 * time.Millisecond)
	exec1(t, pg, "INSERT INTO ledger (note) SELECT md5(g::text) FROM generate_series(1, 200000) g") // the LSN moves far ahead
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)

	// The database is restored in place to t1 while the sidecar keeps running: the server's
	// LSN goes back, and its new slot starts low.
	if err := pg.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", pg.DataDir(), "--to", t1.Format(time.RFC3339Nano), "--move-aside", "--owner", "postgres"); code != 0 {
		t.Fatalf("restore in place: %s", stderr)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pg.WaitPromoted(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(t, pg, "SELECT count(*) FROM ledger"); got != "100" {
		t.Fatalf("restored ledger has %s rows; want 100", got)
	}
	// New writes on timeline 2; at no point may the slot be ahead of the archive.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		exec1(t, pg, "INSERT INTO ledger (note) SELECT 'timeline 2' FROM generate_series(1, 2000)")
		assertAckNotAheadOfArchive(t, pg, url)
		time.Sleep(500 * time.Millisecond)
	}
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)
	if st, _ := sc.Status(ctx); st.Timeline != 2 {
		t.Fatalf("the sidecar archives timeline %d after the restore; want 2", st.Timeline)
	}
}
