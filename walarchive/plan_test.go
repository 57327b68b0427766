package walarchive

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

// In the fake archives every segment n holds, after its long page header, one record at
// +40 that is not a transaction, a commit at +88 of transaction xidAt(n) ending at
// commitAt(t0, n), and XLOG_SWITCH.
const (
	fakeNoopOff   = 40
	fakeCommitOff = 88
)

func commitAt(t0 time.Time, n uint64) time.Time { return t0.Add(time.Duration(n) * time.Minute) }

func xidAt(n uint64) uint32 { return 1000 + uint32(n) }

// fakeWAL writes segments [first, last] of timeline tli with one commit each.
func fakeWAL(t *testing.T, a *Archive, tli uint32, first, last uint64, t0 time.Time) {
	t.Helper()
	g := newWALGen(pg15, seg1M, first)
	for n := first; n <= last; n++ {
		g.noop(16)
		if l := g.xactEnd(xactCommit, commitAt(t0, n), xidAt(n)); l != SegmentStartLSN(n, seg1M)+fakeCommitOff {
			t.Fatalf("generated commit at %s; want %s", l, SegmentStartLSN(n, seg1M)+fakeCommitOff)
		}
		g.switchSegment()
	}
	for n := first; n <= last; n++ {
		if _, err := a.PutImmutable(context.Background(), SegmentKey(tli, n, seg1M), bytes.NewReader(g.segment(n))); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeArchive builds an archive on the memory backend with segments [first, last] of
// timeline 1 and the given backups.
func fakeArchive(t *testing.T, first, last uint64, t0 time.Time, backups ...BackupRecord) *Archive {
	t.Helper()
	a, err := InitArchive(context.Background(), memory.New(), testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fakeWAL(t, a, 1, first, last, t0)
	putBackups(t, a, backups...)
	return a
}

func putBackups(t *testing.T, a *Archive, backups ...BackupRecord) {
	t.Helper()
	for _, b := range backups {
		b.FormatVersion = FormatVersion
		b.Objects = []BackupObject{{Name: "base.tar", RawBytes: 1, SHA256: "00"}}
		if err := a.PutJSON(context.Background(), BackupRecordKey(b.ID), b); err != nil {
			t.Fatal(err)
		}
	}
}

// backupAt is a backup of timeline 1 inside segment seg that stops 30 s before that
// segment's commit, at the commit's LSN (so the commit is after the backup).
func backupAt(id string, seg uint64, t0 time.Time) BackupRecord {
	stop := commitAt(t0, seg).Add(-30 * time.Second)
	return BackupRecord{ID: id, Timeline: 1, StartLSN: SegmentStartLSN(seg, seg1M) + fakeNoopOff, StopLSN: SegmentStartLSN(seg, seg1M) + fakeCommitOff,
		StartTime: stop.Add(-time.Second), StopTime: stop}
}

func planAt(t *testing.T, a *Archive, req RestoreRequest) (RestorePlan, error) {
	t.Helper()
	return a.PlanRestore(context.Background(), req, time.Now())
}

func TestPlanRestoreChoosesTheNewestBackupEndingAtOrBeforeTheTarget(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b2, b10 := backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 10, t0)
	a := fakeArchive(t, 2, 20, t0, b2, b10)
	for _, tc := range []struct {
		target time.Time
		want   string
	}{
		{commitAt(t0, 5).Add(10 * time.Second), b2.ID},
		{b10.StopTime, b10.ID}, // stop time == target: at or before
		{b10.StopTime.Add(-time.Microsecond), b2.ID},
	} {
		p, err := planAt(t, a, RestoreRequest{Target: Target{Time: tc.target}})
		if err != nil || p.Backup.ID != tc.want || p.Stop != StopAtTime {
			t.Errorf("target %s: backup %q, stop %s, %v; want %s stopping at the time", tc.target, p.Backup.ID, p.Stop, err, tc.want)
		}
	}
	p, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}})
	if err != nil || p.Backup.ID != b10.ID || p.Stop != StopAtEnd {
		t.Errorf("latest: %+v %s, %v", p.Backup.ID, p.Stop, err)
	}
	// --backup forces an older backup; one that ends after the target is refused.
	p, err = planAt(t, a, RestoreRequest{Target: Target{Latest: true}, BackupID: b2.ID})
	if err != nil || p.Backup.ID != b2.ID {
		t.Errorf("--backup: %+v, %v", p.Backup.ID, err)
	}
	if _, err := planAt(t, a, RestoreRequest{Target: Target{Time: commitAt(t0, 3)}, BackupID: b10.ID}); err == nil {
		t.Error("a forced backup that ends after the target was accepted")
	}
}

func TestPlanRestoreNeverReplaysPastTheTarget(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b10 := backupAt("20260101T010000Z", 10, t0)
	// A backup of segment 20 that stops after that segment's commit: nothing ends after it.
	b20 := BackupRecord{ID: "20260101T020000Z", Timeline: 1, StartLSN: SegmentStartLSN(20, seg1M) + fakeNoopOff,
		StopLSN: SegmentStartLSN(20, seg1M) + fakeCommitOff + 40, StartTime: commitAt(t0, 20), StopTime: commitAt(t0, 20).Add(time.Second)}
	a := fakeArchive(t, 2, 20, t0, b10)
	// A target after the last archived transaction of the live timeline is refused: the
	// archive's WAL ends there, and commits the server made after it (in tail parts still
	// in flight, or lost with a writer that died) are not known to be absent.
	_, err := planAt(t, a, RestoreRequest{Target: Target{Time: commitAt(t0, 20).Add(10 * time.Second)}})
	if err == nil || !strings.Contains(err.Error(), "--to latest") {
		t.Fatalf("target after the last archived commit: %v; want it refused, naming --to latest", err)
	}
	// At the last archived commit: the window's end, restored exactly.
	p, err := planAt(t, a, RestoreRequest{Target: Target{Time: commitAt(t0, 20)}})
	if err != nil || !p.Window.Latest.Equal(commitAt(t0, 20)) || p.Stop != StopAtLSN || p.LastXactLSN != SegmentStartLSN(20, seg1M)+fakeCommitOff {
		t.Fatalf("target at the last commit: %+v, %v; want it restorable, stopping right after that commit, the window ending there", p, err)
	}
	// No transaction between the backup's stop and the target (the window's end, the stop of
	// the newest backup, as no transaction ended after it): stop at the end of the backup.
	putBackups(t, a, b20)
	p, err = planAt(t, a, RestoreRequest{Target: Target{Time: b20.StopTime}})
	if err != nil || p.Backup.ID != b20.ID || p.Stop != StopImmediate {
		t.Fatalf("no commit after the backup: %s %s, %v; want %s stopping when consistent", p.Backup.ID, p.Stop, err, b20.ID)
	}
}

func TestPlanRestoreRefusesTargetsOutsideTheWindowAndBackupsMissingWAL(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b2 := backupAt("20260101T000000Z", 2, t0)
	a := fakeArchive(t, 2, 5, t0, b2)
	for target, want := range map[time.Time]string{
		b2.StopTime.Add(-time.Second): "before the oldest usable backup",
		time.Now().Add(time.Hour):     "in the future",
	} {
		if _, err := planAt(t, a, RestoreRequest{Target: Target{Time: target}}); err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrRestoreRefused) {
			t.Errorf("target %s: err = %v; want %q, a refusal (ErrRestoreRefused)", target, err, want)
		}
	}
	// A backup whose WAL is not in the archive is not usable.
	b := fakeArchive(t, 2, 5, t0, backupAt("20260101T000000Z", 9, t0))
	if _, err := planAt(t, b, RestoreRequest{Target: Target{Latest: true}}); err == nil {
		t.Error("a backup without its WAL was planned")
	}
	if _, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}, Timeline: 7}); err == nil || !strings.Contains(err.Error(), "timeline") || !errors.Is(err, ErrRestoreRefused) {
		t.Errorf("unknown timeline: %v", err)
	}
}

func TestPlanRestoreUsesTheRangeAfterAWALHole(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b2, b15 := backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 15, t0)
	a := fakeArchive(t, 2, 20, t0, b2, b15)
	a.Storage.Delete(context.Background(), SegmentKey(1, 12, seg1M)) // a slot invalidation lost segment 12
	sum, err := a.Summarize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ws := sum.Windows[1]
	if len(ws) != 2 || !ws[0].Hole || !ws[0].Earliest.Equal(b2.StopTime) || !ws[0].Latest.Equal(commitAt(t0, 11)) ||
		ws[1].Hole || !ws[1].Earliest.Equal(b15.StopTime) || sum.Window == nil || !sum.Window.Earliest.Equal(b15.StopTime) {
		t.Fatalf("windows %+v (window %+v); want [%s, %s] then a hole, then [%s, end]", ws, sum.Window, b2.StopTime, commitAt(t0, 11), b15.StopTime)
	}
	for _, tc := range []struct {
		target time.Time
		backup string // "" means refused
	}{
		{commitAt(t0, 8).Add(10 * time.Second), b2.ID},
		{commitAt(t0, 11), b2.ID},
		{commitAt(t0, 11).Add(time.Second), ""}, // WAL after segment 11 is lost
		{commitAt(t0, 14), ""},
		{commitAt(t0, 16).Add(10 * time.Second), b15.ID},
	} {
		p, err := planAt(t, a, RestoreRequest{Target: Target{Time: tc.target}})
		switch {
		case tc.backup == "" && err == nil:
			t.Errorf("target %s in the hole was planned with backup %s", tc.target, p.Backup.ID)
		case tc.backup != "" && (err != nil || p.Backup.ID != tc.backup):
			t.Errorf("target %s: backup %q, %v; want %s", tc.target, p.Backup.ID, err, tc.backup)
		}
	}
}

// forkedArchive is timeline 1 with segments 2..20 and backups in segments 2, 8 and 14, and
// timeline 2 forked at the start of segment 5 (a restore to a time between the first two
// backups), with segments 5..9 whose commits are 100 minutes later.
func forkedArchive(t *testing.T, t0 time.Time) (*Archive, []BackupRecord) {
	t.Helper()
	bs := []BackupRecord{backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 8, t0), backupAt("20260101T020000Z", 14, t0)}
	a := fakeArchive(t, 2, 20, t0, bs...)
	fakeWAL(t, a, 2, 5, 9, t0.Add(100*time.Minute))
	h := TimelineHistory{{Parent: 1, SwitchPoint: SegmentStartLSN(5, seg1M), Reason: "before 2026-01-01"}}
	if err := a.PutHistory(context.Background(), 2, h.Format()); err != nil {
		t.Fatal(err)
	}
	return a, bs
}

func TestPlanRestoreRefusesATimeOnTwoDivergingTimelines(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	a, bs := forkedArchive(t, t0)
	// Before the fork both timelines hold the same history: the newest is chosen.
	p, err := planAt(t, a, RestoreRequest{Target: Target{Time: commitAt(t0, 3).Add(10 * time.Second)}})
	if err != nil || p.Timeline != 2 || p.Backup.ID != bs[0].ID || p.Stop != StopAtTime {
		t.Fatalf("target before the fork: timeline %d backup %s stop %s, %v; want timeline 2 from %s", p.Timeline, p.Backup.ID, p.Stop, err, bs[0].ID)
	}
	// After the fork timeline 1 went on and timeline 2 restarted later: ambiguous.
	target := commitAt(t0, 16).Add(10 * time.Second)
	if _, err := planAt(t, a, RestoreRequest{Target: Target{Time: target}}); !errors.Is(err, ErrAmbiguousTimeline) || !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "--timeline 1") {
		t.Fatalf("target on both timelines: %v; want ErrAmbiguousTimeline naming --timeline 1", err)
	}
	p, err = planAt(t, a, RestoreRequest{Target: Target{Time: target}, Timeline: 1})
	if err != nil || p.Timeline != 1 || p.Backup.ID != bs[2].ID || p.Stop != StopAtTime {
		t.Fatalf("--timeline 1: timeline %d backup %s stop %s, %v", p.Timeline, p.Backup.ID, p.Stop, err)
	}
	p, err = planAt(t, a, RestoreRequest{Target: Target{Time: target}, Timeline: 2})
	if err != nil || p.Timeline != 2 || p.Backup.ID != bs[0].ID || p.Stop != StopAtTime {
		t.Fatalf("--timeline 2: timeline %d backup %s stop %s, %v", p.Timeline, p.Backup.ID, p.Stop, err)
	}
}

func TestPruneAfterARestoreKeepsTheLiveTimelineRestorable(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	a, bs := forkedArchive(t, t0)
	plan, err := a.PlanPrune(context.Background(), Retention{KeepBackups: 2}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.RemoveBackups) != 0 {
		t.Fatalf("removes %v; the newest backup on timeline 2's path (%s) and the 2 newest must stay", plan.RemoveBackups, bs[0].ID)
	}
	for _, k := range plan.RemoveWAL {
		if f, _ := ParseWALKey(k, seg1M); f.Timeline == 2 || f.SegNo >= 2 {
			t.Fatalf("would remove %s", k)
		}
	}
	if err := a.Prune(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	if p, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}}); err != nil || p.Timeline != 2 {
		t.Fatalf("after prune, restore to latest: timeline %d, %v", p.Timeline, err)
	}
}

func TestParseTargetRequiresAZone(t *testing.T) {
	for _, ok := range []string{"latest", "2026-11-24T10:30:00Z", "2026-11-24T10:30:00.123456+02:00"} {
		if _, err := ParseTarget(ok); err != nil {
			t.Errorf("ParseTarget(%q): %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		"2026-11-24T10:30:00": "no time zone",
		"2026-11-24 10:30:00": "expected 'latest' or an RFC 3339 time",
		"now":                 "expected 'latest'",
		"":                    "expected 'latest'",
	} {
		if _, err := ParseTarget(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTarget(%q) err = %v; want %q", in, err, want)
		}
	}
}

func TestPruneKeepsWhatRetainedBackupsNeed(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	t0 := now.Add(-3 * time.Hour)
	old, mid, young := backupAt("20260101T000000Z", 2, t0), backupAt("20260102T000000Z", 10, t0), backupAt("20260103T000000Z", 20, t0)
	a := fakeArchive(t, 2, 30, t0, old, mid, young)
	if _, err := a.PlanPrune(ctx, Retention{}, now); err == nil {
		t.Fatal("a retention that keeps nothing was accepted")
	}
	plan, err := a.PlanPrune(ctx, Retention{KeepBackups: 2}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.RemoveBackups) != 1 || plan.RemoveBackups[0].ID != old.ID {
		t.Fatalf("removes %+v; want only the oldest backup", plan.RemoveBackups)
	}
	for _, k := range plan.RemoveWAL {
		f, _ := ParseWALKey(k, seg1M)
		if f.SegNo >= 10 {
			t.Fatalf("would remove %s, which the kept backup %s needs", k, mid.ID)
		}
	}
	if len(plan.RemoveWAL) != 8 {
		t.Fatalf("removes %d WAL objects; want segments 2..9", len(plan.RemoveWAL))
	}
	if err := a.Prune(ctx, plan); err != nil {
		t.Fatal(err)
	}
	// Still restorable from the oldest kept backup to the end.
	if _, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}, BackupID: mid.ID}, now); err != nil {
		t.Fatalf("after pruning, the oldest kept backup cannot be restored: %v", err)
	}
	// keep-within keeps by age, and the youngest backup before the window, which a restore
	// to the window's start needs.
	window := now.Sub(young.StopTime) + time.Minute
	plan, _ = a.PlanPrune(ctx, Retention{KeepWithin: window}, now)
	if len(plan.Keep) != 2 || plan.Keep[0].ID != mid.ID || plan.Keep[1].ID != young.ID {
		t.Fatalf("keep-within keeps %+v; want %s (before the window) and %s", plan.Keep, mid.ID, young.ID)
	}
	if !strings.Contains(strings.Join(plan.Keep[0].Reasons, ";"), "youngest backup before") {
		t.Errorf("reasons for %s: %v", mid.ID, plan.Keep[0].Reasons)
	}
}

func TestGraphReachReportsHolesIncludingAPartialInTheMiddle(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour)
	a := fakeArchive(t, 2, 9, t0)
	reach := func() WALEnd {
		g, err := a.ReadGraph(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := g.Path(1)
		return g.Reach(p, 2)
	}
	if end := reach(); end.End != SegmentStartLSN(10, seg1M) || end.Missing != "" || end.Partial {
		t.Fatalf("continuous 2..9: %+v", end)
	}
	// The live tail: a partial at the end is not a hole.
	a.Put(ctx, PartialKey(1, 10, seg1M), bytes.NewReader([]byte{1}))
	if end := reach(); !end.Partial || end.LastSegment != 10 || end.Missing != "" {
		t.Fatalf("with a tail partial: %+v", end)
	}
	// Segment 10 still on its way while the few after it landed (a writer storing a
	// backlog several at a time): the live end, not a hole.
	a.PutImmutable(ctx, SegmentKey(1, 12, seg1M), bytes.NewReader(make([]byte, seg1M)))
	if end := reach(); end.Missing != "" || !end.InFlight || end.LastSegment != 10 {
		t.Fatalf("segments in flight: %+v; want the live end at 10, no hole", end)
	}
	// A partial followed by more WAL than a writer has in flight, and a missing segment,
	// are holes.
	a.PutImmutable(ctx, SegmentKey(1, 14, seg1M), bytes.NewReader(make([]byte, seg1M)))
	if end := reach(); end.Missing != SegmentName(1, 10, seg1M) {
		t.Fatalf("partial in the middle: Missing = %q", end.Missing)
	}
	a.Storage.Delete(ctx, SegmentKey(1, 5, seg1M))
	if end := reach(); end.Missing != SegmentName(1, 5, seg1M) || end.End != SegmentStartLSN(5, seg1M) {
		t.Fatalf("missing segment 5: %+v", end)
	}
}

func TestPlanRestoreRefusesAnArchiveOfAnUnknownPostgreSQLVersion(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	for major, want := range map[int]string{
		20: "PostgreSQL 20 is not supported by this kcbackup: its WAL format is unknown",
		14: "PostgreSQL 14 is not supported: kcbackup supports PostgreSQL 15, 16, 17, 18 and 19",
	} {
		a := fakeArchive(t, 2, 8, t0, backupAt("20260101T000000Z", 2, t0))
		a.Identity.PostgresVersion = major // as read from identity.json
		for _, req := range []RestoreRequest{{Target: Target{Latest: true}}, {Target: Target{Time: commitAt(t0, 4)}}} {
			if _, err := planAt(t, a, req); err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrRestoreRefused) {
				t.Errorf("PostgreSQL %d archive, target %s: %v; want %q", major, req.Target, err, want)
			}
		}
	}
}

// Timeline 1 goes on past a hole that ends its ranges; timeline 2 forked before the hole.
// A time after the hole is not in timeline 1's ranges, yet timeline 1 held it: answering
// with timeline 2's fork state would be another history. Found by the history checker
// (seeds 3019 and 3037).
func TestPlanRestoreRefusesATimeAnotherTimelineHeldPastAHole(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	b2, b8 := backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 8, t0)
	a := fakeArchive(t, 2, 20, t0, b2, b8)
	fakeWAL(t, a, 2, 5, 9, t0.Add(100*time.Minute))
	h := TimelineHistory{{Parent: 1, SwitchPoint: SegmentStartLSN(5, seg1M), Reason: "before 2026-01-01"}}
	if err := a.PutHistory(context.Background(), 2, h.Format()); err != nil {
		t.Fatal(err)
	}
	a.Storage.Delete(context.Background(), SegmentKey(1, 12, seg1M)) // timeline 1's slot was invalidated
	target := commitAt(t0, 16)
	if _, err := planAt(t, a, RestoreRequest{Target: Target{Time: target}}); !errors.Is(err, ErrAmbiguousTimeline) || !strings.Contains(err.Error(), "past a hole") {
		t.Fatalf("a time timeline 1 held past its hole: %v; want ErrAmbiguousTimeline", err)
	}
	if p, err := planAt(t, a, RestoreRequest{Target: Target{Time: target}, Timeline: 2}); err != nil || p.Timeline != 2 {
		t.Fatalf("--timeline 2: %d, %v", p.Timeline, err)
	}
	// Before the fork both hold the same history: no refusal.
	if p, err := planAt(t, a, RestoreRequest{Target: Target{Time: commitAt(t0, 3).Add(10 * time.Second)}}); err != nil || p.Timeline != 2 {
		t.Fatalf("before the fork: %d, %v", p.Timeline, err)
	}
}

// Issue 19: a restored copy archived timeline 2 beside production, which went on writing
// timeline 1. "latest" is then not one history: it is refused, naming --timeline for each.
func TestPlanRestoreRefusesLatestOnATimelineThatForkedWhileItsParentWasWritten(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	a, _ := forkedArchive(t, t0)
	if p, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}}); err != nil || p.Timeline != 2 {
		t.Fatalf("timeline 1 ended before timeline 2 began (an in-place restore): timeline %d, %v; want 2", p.Timeline, err)
	}
	time.Sleep(2 * time.Millisecond)
	fakeWAL(t, a, 1, 21, 22, t0) // production goes on after the copy began archiving
	_, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}})
	if !errors.Is(err, ErrAmbiguousTimeline) || !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "--timeline 1") || !strings.Contains(err.Error(), "--timeline 2") {
		t.Fatalf("latest with timeline 1 written after timeline 2 began: %v; want ErrAmbiguousTimeline naming --timeline 1 and 2", err)
	}
	for _, tli := range []uint32{1, 2} {
		if p, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}, Timeline: tli}); err != nil || p.Timeline != tli {
			t.Fatalf("--timeline %d: timeline %d, %v", tli, p.Timeline, err)
		}
	}
}

// A promotion: the parent's last segment, cut short at the switch point, is stored as a
// partial after the child's history (one sidecar follows the switch). That is not two
// writers: latest is the child.
func TestPlanRestoreLatestAfterAPromotionIsTheNewTimeline(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	a, _ := forkedArchive(t, t0)
	time.Sleep(2 * time.Millisecond)
	// Timeline 1's segment 5 holds the switch point (0/500000 + 100): it is stored only as
	// a partial, which lands late.
	a.Storage.Delete(context.Background(), SegmentKey(1, 5, seg1M))
	if _, err := a.Put(context.Background(), PartialKey(1, 5, seg1M), bytes.NewReader(make([]byte, 100))); err != nil {
		t.Fatal(err)
	}
	h := TimelineHistory{{Parent: 1, SwitchPoint: SegmentStartLSN(5, seg1M) + 100}}
	g, err := a.ReadGraph(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g.history[2] = h
	if _, _, _, forked := g.ForkedWhileWritten(2); forked {
		t.Fatal("the parent's cut-short partial at the switch point was taken for a second writer")
	}
	if _, err := a.PutImmutable(context.Background(), SegmentKey(1, 5, seg1M), bytes.NewReader(make([]byte, seg1M))); err != nil {
		t.Fatal(err)
	}
	if g, _ = a.ReadGraph(context.Background()); g != nil {
		g.history[2] = h
		if _, _, _, forked := g.ForkedWhileWritten(2); !forked {
			t.Fatal("the parent's complete segment past the switch point, stored after the child began, was not seen")
		}
	}
}

// failingList is a store whose listings fail, as an S3 outage would.
type failingList struct{ storage.Storage }

func (failingList) List(context.Context, string) ([]storage.ObjectInfo, error) {
	return nil, errors.New("connection refused")
}

// A failure to read the archive is not a refusal: the operator's dry-run plan retries it
// (docs/operator-guide.md), where a refusal fails the restore for good.
func TestPlanRestoreTellsAReadFailureFromARefusal(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	a := fakeArchive(t, 2, 8, t0, backupAt("20260101T000000Z", 2, t0))
	if _, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}}); err != nil {
		t.Fatalf("healthy archive: %v", err)
	}
	a.Storage = failingList{a.Storage}
	_, err := planAt(t, a, RestoreRequest{Target: Target{Latest: true}})
	if err == nil || !strings.Contains(err.Error(), "connection refused") || errors.Is(err, ErrRestoreRefused) {
		t.Fatalf("listing fails: %v; want the read error, not a refusal", err)
	}
}
