package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// replicaArgs: a short writer TTL so a crashed primary's claim lapses quickly, and the
// standby's slot advanced every half second.
var replicaArgs = []string{"--partial-interval", "200ms", "--writer-ttl", "3s", "--standby-slot-interval", "500ms"}

// replicaSettings keep no WAL for standbys (wal_keep_size 0): what a standby keeps after a
// restart point is only what its slot holds, so a hole would show.
func replicaSettings(version int) harness.PGOptions {
	return pgSettingsOn(version, map[string]string{"wal_keep_size": "0", "min_wal_size": "2MB"})
}

// A primary and a streaming standby, each with its sidecar on one archive (file://): only
// the primary's sidecar archives. The primary's sidecar crashes, rows go on being committed
// and replicated (the archive lags), the standby restarts its WAL (a restart point frees
// what its slot does not hold), and all that time the standby's sidecar writes nothing into
// the archive, although the lapsed claim would let it. Then the primary dies, the standby is
// promoted: its sidecar takes the archive over and archives from where the archive ended,
// on timeline 2, so restore --to latest holds every row committed before and after the
// failover, and the archive has no hole.
func TestReplicasFailoverArchivesWithoutAHole(t *testing.T) {
	harness.ForEachPGVersion(t, func(t *testing.T, version int) {
		testReplicaFailover(t, version, fileArchive(t), nil)
	})
}

// The same story on MinIO, with the default PostgreSQL.
func TestReplicasFailoverArchivesWithoutAHoleOnMinIO(t *testing.T) {
	minio := harness.StartMinIO(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	setEnv(t, env)
	testReplicaFailover(t, harness.PGDefaultVersion, "s3://"+minio.NewBucket(t)+"/keycloak-db", env)
}

func testReplicaFailover(t *testing.T, version int, url string, env []string) {
	ctx := context.Background()

	// Step 1: a primary archiving, a standby standing by, a base backup.
	p := harness.StartPostgres(t, replicaSettings(version))
	createLedger(t, p)
	s := harness.StartStandby(t, p, harness.PGOptions{})
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Env: env, Args: replicaArgs})
	ss := harness.StartSidecar(t, s, harness.SidecarOptions{Storage: url, Env: env, Args: replicaArgs})
	takeBackup(t, p, url, env)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'archived' FROM generate_series(1, 100)")
	exec1(t, p, "SELECT pg_switch_wal()")
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'archived' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)
	waitStandingBy(t, ss)
	if _, err := ss.Client().StartBackup(ctx); !errors.Is(err, apiclient.ErrStandby) || !strings.Contains(err.Error(), "standby") {
		t.Fatalf("a backup asked of the standby's sidecar: %v; want 421 naming the standby", err)
	}

	// Step 2: the primary's sidecar crashes; its claim lapses. The archive stops at end1.
	ps.Kill()
	a := openArchive(t, url)
	end1, _, err := a.TimelineEnd(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	before := archiveObjects(t, a)

	// Step 3: rows go on, replicated but not archived, across several segments; both
	// servers restart their WAL, so the standby keeps only what its slot holds.
	for i := 0; i < 6; i++ {
		exec1(t, p, "INSERT INTO ledger (note) SELECT 'replicated' FROM generate_series(1, 50)")
		exec1(t, p, "SELECT pg_switch_wal()")
	}
	exec1(t, p, "CHECKPOINT")
	waitReplayed(t, s, flushLSN(t, p))
	exec1(t, s, "CHECKPOINT")
	// Once the crashed writer's claim has lapsed the standby's sidecar could claim the
	// archive, and must not: a few more of its rounds.
	waitLapsed(t, a)
	waitSlotRounds(t, ss, 3)
	restart := lsn(t, query(t, s, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'kcbackup'"))
	if restart > end1 || end1-restart > walarchive.LSN(a.SegmentSize()) {
		t.Fatalf("the standby's slot holds WAL from %s; want at most one segment before the archive's end %s, never after", restart, end1)
	}
	if after := archiveObjects(t, a); after != before {
		t.Fatalf("the standby's sidecar wrote into the archive while standing by:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	waitStandingBy(t, ss)

	// Step 4: the primary dies; the standby is promoted and writes on.
	replicated := query(t, p, "SELECT count(*) FROM ledger")
	if err := p.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	exec1(t, s, "INSERT INTO ledger (note) SELECT 'promoted' FROM generate_series(1, 70)")
	exec1(t, s, "SELECT pg_switch_wal()")
	exec1(t, s, "INSERT INTO ledger (note) SELECT 'promoted' FROM generate_series(1, 30)")
	waitArchived(t, ss, flushLSN(t, s), 2*time.Minute)
	if st, err := ss.Status(ctx); err != nil || st.Role != apiclient.RolePrimary || st.Timeline != 2 {
		t.Fatalf("the promoted standby's sidecar reports %+v, %v; want role primary on timeline 2", st, err)
	}
	h, err := a.History(ctx, 2)
	if err != nil || len(h) != 1 || h[0].Parent != 1 || h[0].SwitchPoint < end1 {
		t.Fatalf("timeline 2's archived history = %+v, %v; want a branch from timeline 1 at or after %s", h, err, end1)
	}

	// Step 5: no hole, and every row of both servers comes back.
	sum, err := a.Summarize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.LiveTimeline != 2 || sum.Window == nil || sum.Window.Hole {
		t.Fatalf("the archive's live timeline %d, window %+v; want timeline 2 restorable without a hole", sum.LiveTimeline, sum.Window)
	}
	for tli, ws := range sum.Windows {
		for _, w := range ws {
			if w.Hole {
				t.Fatalf("timeline %d's range %+v ends at a hole", tli, w)
			}
		}
	}
	if out, _, code := harness.Kcbackup(t, ctx, env, "verify", "--storage", url); code != 0 {
		t.Fatalf("verify after the failover failed:\n%s", out)
	}
	r, _ := restoreAndStart(t, env, url, "latest")
	want := fmt.Sprintf("%s/100", replicated)
	got := query(t, r, "SELECT count(*) FILTER (WHERE note <> 'promoted') || '/' || count(*) FILTER (WHERE note = 'promoted') FROM ledger")
	if got != want {
		t.Fatalf("restore --to latest holds %s rows (before the failover/after it); want %s", got, want)
	}
	t.Logf("failover on PostgreSQL %d: archive ended at %s when the old writer crashed; timeline 2 branched at %s; %s rows from before, 100 after, all restored",
		version, end1, h[0].SwitchPoint, replicated)
}

// The old primary's PostgreSQL dies but its sidecar lives on (the pod stays, the database
// container crash-loops): after a writer TTL without an answer the sidecar stops archiving
// and releases the archive, so the promoted standby's sidecar takes over without waiting for
// the old pod to go.
func TestAPromotedStandbyTakesOverFromASidecarWhoseServerDied(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	p := harness.StartPostgres(t, replicaSettings(harness.PGDefaultVersion))
	createLedger(t, p)
	s := harness.StartStandby(t, p, harness.PGOptions{})
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: replicaArgs})
	ss := harness.StartSidecar(t, s, harness.SidecarOptions{Storage: url, Args: replicaArgs})
	takeBackup(t, p, url, nil)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)
	waitReplayed(t, s, flushLSN(t, p))

	if err := p.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	exec1(t, s, "INSERT INTO ledger (note) SELECT 'after' FROM generate_series(1, 50)")
	waitArchived(t, ss, flushLSN(t, s), 2*time.Minute)
	if ps.Exited() || !strings.Contains(ps.Log(), "released the archive's writer claim") {
		t.Fatalf("the old primary's sidecar did not release the archive and live on (exited %v):\n%s", ps.Exited(), ps.Log())
	}
	r, _ := restoreAndStart(t, nil, url, "latest")
	if got := query(t, r, "SELECT count(*) FILTER (WHERE note = 'before') || '/' || count(*) FILTER (WHERE note = 'after') FROM ledger"); got != "100/50" {
		t.Fatalf("restore --to latest holds %s rows (before/after the failover); want 100/50", got)
	}
}

// A standby's sidecar that is never promoted writes not a single object into the archive,
// even when the archive has no writer at all (the primary's sidecar stopped and released
// its claim): it only keeps its slot and says it stands by.
func TestStandbySidecarNeverWritesIntoTheArchive(t *testing.T) {
	url := fileArchive(t)
	p := harness.StartPostgres(t, replicaSettings(harness.PGDefaultVersion))
	createLedger(t, p)
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: replicaArgs})
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'x' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)
	if err := ps.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}
	a := openArchive(t, url)
	before := archiveObjects(t, a)

	s := harness.StartStandby(t, p, harness.PGOptions{})
	ss := harness.StartSidecar(t, s, harness.SidecarOptions{Storage: url, Args: replicaArgs})
	for i := 0; i < 3; i++ {
		exec1(t, p, "INSERT INTO ledger (note) SELECT 'y' FROM generate_series(1, 100)")
		exec1(t, p, "SELECT pg_switch_wal()")
	}
	waitReplayed(t, s, flushLSN(t, p))
	waitStandingBy(t, ss)
	waitSlotRounds(t, ss, 3)
	if after := archiveObjects(t, a); after != before {
		t.Fatalf("the standby's sidecar wrote into the archive:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if v, err := ss.Metric(`kcbackup_server_role{role="standby"}`); err != nil || v != 1 {
		t.Fatalf("kcbackup_server_role{role=\"standby\"} = %v, %v; want 1", v, err)
	}
	if !strings.Contains(ss.Log(), "standing by") && !strings.Contains(ss.Log(), "standby") {
		t.Fatalf("the standby's sidecar did not log that it stands by:\n%s", ss.Log())
	}
}

// A switchover: the primary stops cleanly, the standby is promoted, and the old primary
// rejoins as a standby of the new one while its sidecar still holds the archive (a writer
// TTL of a minute, so nothing lapses meanwhile). The old primary's sidecar sees its server
// in recovery, stops archiving and releases the archive; the new primary's sidecar takes it
// over, and the old one stands by.
func TestADemotedPrimarysSidecarBecomesAStandbyAndReleasesTheArchive(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	p := harness.StartPostgres(t, replicaSettings(harness.PGDefaultVersion))
	createLedger(t, p)
	s := harness.StartStandby(t, p, harness.PGOptions{})
	long := []string{"--partial-interval", "200ms", "--writer-ttl", "60s", "--standby-slot-interval", "500ms"}
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: long})
	ss := harness.StartSidecar(t, s, harness.SidecarOptions{Storage: url, Args: replicaArgs})
	takeBackup(t, p, url, nil)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)

	if err := p.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.RejoinAsStandby(ctx, s); err != nil {
		t.Fatal(err)
	}
	exec1(t, s, "INSERT INTO ledger (note) SELECT 'after' FROM generate_series(1, 50)")
	waitArchived(t, ss, flushLSN(t, s), 2*time.Minute)
	waitStandingBy(t, ps)
	if !strings.Contains(ps.Log(), "released the archive's writer claim") {
		t.Fatalf("the demoted primary's sidecar did not release the archive:\n%s", ps.Log())
	}
	r, _ := restoreAndStart(t, nil, url, "latest")
	if got := query(t, r, "SELECT count(*) FILTER (WHERE note = 'before') || '/' || count(*) FILTER (WHERE note = 'after') FROM ledger"); got != "100/50" {
		t.Fatalf("restore --to latest holds %s rows (before/after the switchover); want 100/50", got)
	}
}

// A role that may open only replication connections (here: its database does not exist,
// which a replication connection ignores) still has its primary found, over SHOW
// in_hot_standby, and archives as before.
func TestReplicationOnlyAccessStillFindsThePrimary(t *testing.T) {
	url := fileArchive(t)
	p := harness.StartPostgres(t, replicaSettings(harness.PGDefaultVersion))
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: replicaArgs, Env: []string{"PGDATABASE=no_such_database"}})
	createLedger(t, p)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'x' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)
	if st, err := ps.Status(context.Background()); err != nil || st.Role != apiclient.RolePrimary {
		t.Fatalf("status = %+v, %v; want role primary", st, err)
	}
}

// archiveObjects lists every object with its size and time: a change means a write.
func archiveObjects(t *testing.T, a *walarchive.Archive) string {
	t.Helper()
	objs, err := a.Storage.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, o := range objs {
		fmt.Fprintf(&b, "%s %d %s\n", o.Key, o.Size, o.ModTime.UTC().Format(time.RFC3339Nano))
	}
	return b.String()
}

// waitStandingBy waits until the sidecar reports that it stands by with its slot kept.
func waitStandingBy(t *testing.T, sc *harness.Sidecar) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last apiclient.Status
	for time.Now().Before(deadline) {
		st, err := sc.Status(context.Background())
		if err == nil {
			last = st
			if st.Role == apiclient.RoleStandby && !st.Streaming && strings.Contains(st.LastError, "standing by: the server is a standby") {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the sidecar does not report standing by: %+v\n%s", last, sc.Log())
}

// waitReplayed waits until the standby has replayed WAL up to lsn.
func waitReplayed(t *testing.T, s *harness.Postgres, target walarchive.LSN) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if lsn(t, query(t, s, "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')")) >= target {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the standby did not replay up to %s within a minute", target)
}

// slotRound is what the sidecar logs (at debug level, as the harness runs it) each time
// it has kept the standby's slot.
const slotRound = "standing by: kept the standby's slot"

// waitSlotRounds waits until the sidecar has kept the standby's slot n more times.
func waitSlotRounds(t *testing.T, sc *harness.Sidecar, n int) {
	t.Helper()
	from := strings.Count(sc.Log(), slotRound)
	deadline := time.Now().Add(time.Minute)
	for strings.Count(sc.Log(), slotRound) < from+n {
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar did not keep its slot %d more times within a minute:\n%s", n, sc.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLapsed waits until the archive's writer claim no longer holds.
func waitLapsed(t *testing.T, a *walarchive.Archive) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := a.WriterState(context.Background())
		if err == nil {
			if live, _ := st.Live(time.Now()); !live {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the crashed writer's claim did not lapse within a minute: %+v, %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
