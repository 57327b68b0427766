package walarchive

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

// fakeArchive builds an archive on the memory backend with complete segments [first, last]
// of timeline 1 (synthetic bytes: no transactions, so restores replay to the end) and the
// given backups.
func fakeArchive(t *testing.T, first, last uint64, backups ...BackupRecord) *Archive {
	t.Helper()
	ctx := context.Background()
	a, err := InitArchive(ctx, memory.New(), testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for n := first; n <= last; n++ {
		if _, err := a.PutImmutable(ctx, SegmentKey(1, n, seg1M), bytes.NewReader(bytes.Repeat([]byte{byte(n)}, seg1M))); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range backups {
		b.FormatVersion = FormatVersion
		b.Objects = []BackupObject{{Name: "base.tar", RawBytes: 1, SHA256: "00"}}
		if err := a.PutJSON(ctx, BackupRecordKey(b.ID), b); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func backupAt(id string, startSeg uint64, stop time.Time) BackupRecord {
	return BackupRecord{ID: id, Timeline: 1, StartLSN: SegmentStartLSN(startSeg, seg1M) + 40, StopLSN: SegmentStartLSN(startSeg, seg1M) + 300,
		StartTime: stop.Add(-time.Second), StopTime: stop}
}

func TestPlanRestoreChoosesTheNewestBackupEndingAtOrBeforeTheTarget(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	a := fakeArchive(t, 2, 20, backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 10, t0.Add(10*time.Minute)))
	for _, tc := range []struct {
		target time.Time
		want   string
	}{
		{t0.Add(time.Minute), "20260101T000000Z"},
		{t0.Add(10 * time.Minute), "20260101T010000Z"}, // stop time == target: at or before
		{t0.Add(10*time.Minute - time.Microsecond), "20260101T000000Z"},
	} {
		p, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Time: tc.target}}, time.Now())
		if err != nil || p.Backup.ID != tc.want {
			t.Errorf("target %s: backup %q, %v; want %s", tc.target, p.Backup.ID, err, tc.want)
		}
	}
	p, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}}, time.Now())
	if err != nil || p.Backup.ID != "20260101T010000Z" || !p.ReplayToEnd {
		t.Errorf("latest: %+v, %v", p.Backup.ID, err)
	}
	// --backup forces an older backup; one that ends after the target is refused.
	p, err = a.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}, BackupID: "20260101T000000Z"}, time.Now())
	if err != nil || p.Backup.ID != "20260101T000000Z" {
		t.Errorf("--backup: %+v, %v", p.Backup.ID, err)
	}
	if _, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Time: t0.Add(time.Minute)}, BackupID: "20260101T010000Z"}, time.Now()); err == nil {
		t.Error("a forced backup that ends after the target was accepted")
	}
}

func TestPlanRestoreRefusesTargetsOutsideTheWindowAndBackupsMissingWAL(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).UTC()
	a := fakeArchive(t, 2, 5, backupAt("20260101T000000Z", 2, t0))
	for target, want := range map[time.Time]string{
		t0.Add(-time.Second):      "before the oldest usable backup",
		time.Now().Add(time.Hour): "in the future",
	} {
		if _, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Time: target}}, time.Now()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("target %s: err = %v; want %q", target, err, want)
		}
	}
	// A backup whose WAL is not in the archive is not usable.
	b := fakeArchive(t, 2, 5, backupAt("20260101T000000Z", 9, t0))
	if _, err := b.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}}, time.Now()); err == nil {
		t.Error("a backup without its WAL was planned")
	}
	if _, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}, Timeline: 7}, time.Now()); err == nil || !strings.Contains(err.Error(), "timeline") {
		t.Errorf("unknown timeline: %v", err)
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
	now := time.Now().UTC()
	a := fakeArchive(t, 2, 30,
		backupAt("20260101T000000Z", 2, now.Add(-72*time.Hour)),
		backupAt("20260102T000000Z", 10, now.Add(-48*time.Hour)),
		backupAt("20260103T000000Z", 20, now.Add(-time.Hour)))
	if _, err := a.PlanPrune(ctx, Retention{}, now); err == nil {
		t.Fatal("a retention that keeps nothing was accepted")
	}
	plan, err := a.PlanPrune(ctx, Retention{KeepBackups: 2}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.RemoveBackups) != 1 || plan.RemoveBackups[0].ID != "20260101T000000Z" {
		t.Fatalf("removes %+v; want only the oldest backup", plan.RemoveBackups)
	}
	for _, k := range plan.RemoveWAL {
		f, _ := ParseWALKey(k, seg1M)
		if f.SegNo >= 10 {
			t.Fatalf("would remove %s, which the kept backup 20260102T000000Z needs", k)
		}
	}
	if len(plan.RemoveWAL) != 8 {
		t.Fatalf("removes %d WAL objects; want segments 2..9", len(plan.RemoveWAL))
	}
	if err := a.Prune(ctx, plan); err != nil {
		t.Fatal(err)
	}
	// Still restorable from the oldest kept backup to the end.
	if _, err := a.PlanRestore(ctx, RestoreRequest{Target: Target{Latest: true}, BackupID: "20260102T000000Z"}, now); err != nil {
		t.Fatalf("after pruning, the oldest kept backup cannot be restored: %v", err)
	}
	// keep-within keeps by age; the newest is always kept.
	plan, _ = a.PlanPrune(ctx, Retention{KeepWithin: time.Minute}, now)
	if len(plan.Keep) != 1 || plan.Keep[0].ID != "20260103T000000Z" {
		t.Fatalf("keep-within 1m keeps %+v; want the newest", plan.Keep)
	}
}

func TestWALReachReportsHolesIncludingAPartialInTheMiddle(t *testing.T) {
	ctx := context.Background()
	a := fakeArchive(t, 2, 9)
	p, _ := a.Path(ctx, 1)
	end, err := a.WALReach(ctx, p, 2)
	if err != nil || end.End != SegmentStartLSN(10, seg1M) || end.Missing != "" || end.Partial {
		t.Fatalf("continuous 2..9: %+v, %v", end, err)
	}
	// The live tail: a partial at the end is not a hole.
	a.Put(ctx, PartialKey(1, 10, seg1M), bytes.NewReader([]byte{1}))
	if end, _ := a.WALReach(ctx, p, 2); !end.Partial || end.LastSegment != 10 || end.Missing != "" {
		t.Fatalf("with a tail partial: %+v", end)
	}
	// A partial followed by more WAL, and a missing segment, are holes.
	a.PutImmutable(ctx, SegmentKey(1, 12, seg1M), bytes.NewReader(make([]byte, seg1M)))
	if end, _ := a.WALReach(ctx, p, 2); end.Missing != SegmentName(1, 10, seg1M) {
		t.Fatalf("partial in the middle: Missing = %q", end.Missing)
	}
	a.Storage.Delete(ctx, SegmentKey(1, 5, seg1M))
	if end, _ := a.WALReach(ctx, p, 2); end.Missing != SegmentName(1, 5, seg1M) || end.End != SegmentStartLSN(5, seg1M) {
		t.Fatalf("missing segment 5: %+v", end)
	}
}
