package walarchive

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTargetReadsTransactionIDs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
		out  string // String(); "" means in
	}{
		{"xid:4711", Target{Xid: 4711, XidGiven: 4711}, ""},
		{"xid:3", Target{Xid: 3, XidGiven: 3}, ""},
		{"xid:4294967295", Target{Xid: 4294967295, XidGiven: 4294967295}, ""},
		{"xid:4711@0/16B3748", Target{Xid: 4711, XidGiven: 4711, XidFrom: 0x16B3748}, ""},
		{"xid:4711@1A/0", Target{Xid: 4711, XidGiven: 4711, XidFrom: 0x1A_0000_0000}, ""},
		// txid_current() of epoch 2: the low 32 bits are the id in WAL.
		{"xid:8589939303@0/3000000", Target{Xid: 4711, XidGiven: 2<<32 + 4711, XidFrom: 0x3000000}, ""},
		// @0/0 is no bound at all.
		{"xid:4711@0/0", Target{Xid: 4711, XidGiven: 4711}, "xid:4711"},
	} {
		got, err := ParseTarget(tc.in)
		if err != nil || got != tc.want || !got.IsXid() {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		out := tc.out
		if out == "" {
			out = tc.in
		}
		if got.String() != out {
			t.Errorf("ParseTarget(%q).String() = %q; want %q", tc.in, got.String(), out)
		}
		if again, err := ParseTarget(got.String()); err != nil || again != got {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", got.String(), again, err, got)
		}
	}
	for in, want := range map[string]string{
		"xid:":                     `transaction id "" is not a decimal number`,
		"xid:abc":                  `transaction id "abc" is not a decimal number`,
		"xid:-5":                   `transaction id "-5" is not a decimal number`,
		"xid:0x10":                 `transaction id "0x10" is not a decimal number`,
		"xid:18446744073709551616": "is not a decimal number",
		"xid:2":                    "0, 1 and 2 are reserved",
		"xid:0":                    "0, 1 and 2 are reserved",
		"xid:4294967296":           "(0 in 32 bits)",
		"xid:4711@":                `invalid LSN ""`,
		"xid:4711@16B3748":         `invalid LSN "16B3748"`,
		"xid:4711@0/XYZ":           "invalid LSN",
		"xid 4711":                 "xid:<N>[@<LSN>]",
		"4711":                     "xid:<N>[@<LSN>]",
	} {
		_, err := ParseTarget(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseTarget(%q) err = %v; want an error naming the input and %q", in, err, want)
		}
		if err != nil && strings.HasPrefix(in, "xid:") && !strings.Contains(err.Error(), "expected xid:<N> or xid:<N>@<LSN>") {
			t.Errorf("ParseTarget(%q) err = %v; want the expected forms named", in, err)
		}
	}
}

// putXactSegment stores segment n of timeline tli holding a record that is not a
// transaction, then the given transaction ends (at +88, then every 40 bytes), then
// XLOG_SWITCH. It returns where each transaction end's record starts.
func putXactSegment(t *testing.T, a *Archive, tli uint32, n uint64, ends ...XactRecord) []LSN {
	t.Helper()
	g := newWALGen(pg15, seg1M, n)
	g.noop(16)
	var at []LSN
	for _, x := range ends {
		op := byte(xactAbort)
		if x.Commit {
			op = xactCommit
		}
		at = append(at, g.xactEnd(op, x.Time, x.Xid))
	}
	g.switchSegment()
	if _, err := a.PutImmutable(context.Background(), SegmentKey(tli, n, seg1M), bytes.NewReader(g.segment(n))); err != nil {
		t.Fatal(err)
	}
	return at
}

func xidTarget(xid uint32, from LSN) Target {
	return Target{Xid: xid, XidGiven: uint64(xid), XidFrom: from}
}

func TestPlanRestoreToATransactionStopsRightAfterItsCommit(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b2, b10 := backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 10, t0)
	a := fakeArchive(t, 2, 20, t0, b2, b10)
	for _, tc := range []struct {
		seg    uint64
		backup string
		forced string
	}{
		{5, b2.ID, ""},
		{10, b10.ID, ""}, // the backup stops at the commit record: it restores to it
		{12, b10.ID, ""},
		{12, b2.ID, b2.ID}, // --backup chooses an older one
		{20, b10.ID, ""},   // the last archived commit
	} {
		p, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(tc.seg), 0), BackupID: tc.forced})
		commit := SegmentStartLSN(tc.seg, seg1M) + fakeCommitOff
		if err != nil || p.Backup.ID != tc.backup || p.Stop != StopAtLSN || p.LastXactLSN != commit || !p.LastXact.Equal(commitAt(t0, tc.seg)) ||
			!p.TargetTime.Equal(commitAt(t0, tc.seg)) || p.Timeline != 1 || !p.NewestTimeline || p.Target != xidTarget(xidAt(tc.seg), 0) {
			t.Errorf("xid %d (--backup %q): %+v, %v; want backup %s stopping right after the commit at %s (%s)", xidAt(tc.seg), tc.forced, p, err, tc.backup, commit, commitAt(t0, tc.seg))
		}
	}
	// A forced backup that stops after the commit is refused, naming it.
	_, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(5), 0), BackupID: b10.ID})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "backup "+b10.ID+" cannot reach target xid:1005") || !strings.Contains(err.Error(), "omit --backup") {
		t.Errorf("--backup %s for a commit before it: %v; want a refusal naming the backup", b10.ID, err)
	}
}

func TestPlanRestoreToATransactionRefusesAnAbortAndAMissingCommit(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	a := fakeArchive(t, 2, 8, t0, backupAt("20260101T000000Z", 2, t0))
	abortedAt := commitAt(t0, 9)
	putXactSegment(t, a, 1, 9, XactRecord{Xid: 5000, Time: abortedAt}, XactRecord{Xid: 5001, Commit: true, Time: abortedAt.Add(time.Second)})
	_, err := planAt(t, a, RestoreRequest{Target: xidTarget(5000, 0)})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "transaction 5000 aborted at "+fmtT(abortedAt)) {
		t.Errorf("an aborted transaction: %v; want a refusal saying it aborted at %s", err, fmtT(abortedAt))
	}
	if p, err := planAt(t, a, RestoreRequest{Target: xidTarget(5001, 0)}); err != nil || p.LastXactLSN != SegmentStartLSN(9, seg1M)+fakeCommitOff+40 {
		t.Errorf("the commit after the abort: %+v, %v", p, err)
	}
	// Not archived (yet): refused, naming the transaction, the timeline and the WAL scanned.
	_, err = planAt(t, a, RestoreRequest{Target: xidTarget(99999, 0)})
	for _, want := range []string{"transaction 99999", "timeline 1", "scanned 0/200000 to 0/A00000", "may not be archived yet"} {
		if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), want) {
			t.Errorf("a transaction not in the archive: %v; want a refusal saying %q", err, want)
		}
	}
	// A lower bound past the archived WAL: refused, saying where the WAL ends.
	_, err = planAt(t, a, RestoreRequest{Target: xidTarget(99999, 0x3000000)})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "from 0/3000000 on") || !strings.Contains(err.Error(), "may not be archived yet") {
		t.Errorf("a lower bound past the archive: %v", err)
	}
}

// 2^32 transactions after xid 1005 committed, the id comes round again: the lower bound,
// an LSN taken inside the transaction, tells which one is meant.
func TestPlanRestoreToATransactionSearchesFromTheLowerBound(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	a := fakeArchive(t, 2, 8, t0, backupAt("20260101T000000Z", 2, t0))
	again := putXactSegment(t, a, 1, 9, XactRecord{Xid: xidAt(5), Commit: true, Time: commitAt(t0, 9)})[0]
	first := SegmentStartLSN(5, seg1M) + fakeCommitOff
	for _, tc := range []struct {
		from LSN
		want LSN
	}{
		{0, first},
		{SegmentStartLSN(4, seg1M), first},
		{first, first},     // the bound is where the record starts: found
		{first + 1, again}, // past it in the same segment: the later one
		{SegmentStartLSN(7, seg1M), again},
	} {
		p, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(5), tc.from)})
		if err != nil || p.LastXactLSN != tc.want {
			t.Errorf("xid %d from %s: commit at %s, %v; want %s", xidAt(5), tc.from, p.LastXactLSN, err, tc.want)
		}
	}
}

func TestPlanRestoreToATransactionRefusesACommitBeforeEveryBackup(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	// The backup stops after segment 10's commit: that commit is inside the backup.
	b := backupAt("20260101T010000Z", 10, t0)
	b.StopLSN += 40
	a := fakeArchive(t, 2, 20, t0, b)
	_, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(10), 0)})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "before backup "+b.ID) {
		t.Errorf("a commit inside the only backup: %v; want a refusal naming the backup", err)
	}
	// A commit before the backup's segment is not searched for: the WAL from the backup's stop is.
	_, err = planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(5), 0)})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "the stop of the oldest usable backup (0/A00080)") {
		t.Errorf("a commit before the only backup: %v", err)
	}
	if p, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(11), 0)}); err != nil || p.Backup.ID != b.ID {
		t.Errorf("a commit after the backup: %+v, %v", p, err)
	}
}

// The same ids ran on both timelines after they parted: the newest timeline is searched
// unless --timeline names another.
func TestPlanRestoreToATransactionFollowsTheChosenTimeline(t *testing.T) {
	t0 := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	a, bs := forkedArchive(t, t0)
	p, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(7), 0)})
	if err != nil || p.Timeline != 2 || !p.LastXact.Equal(commitAt(t0.Add(100*time.Minute), 7)) || p.Backup.ID != bs[0].ID {
		t.Errorf("newest timeline: %+v, %v; want timeline 2's commit", p, err)
	}
	p, err = planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(7), 0), Timeline: 1})
	if err != nil || p.Timeline != 1 || !p.LastXact.Equal(commitAt(t0, 7)) || p.NewestTimeline {
		t.Errorf("--timeline 1: %+v, %v; want timeline 1's commit", p, err)
	}
	// Past the fork timeline 2 has only segments up to 9.
	if _, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(15), 0)}); !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "timeline 2") {
		t.Errorf("a transaction of timeline 1 only: %v; want a refusal on timeline 2", err)
	}
}

// A hole in the WAL splits the path into two ranges: a commit after it restores from a
// backup after it, and one in the lost WAL is refused, naming the WAL that was searched.
func TestPlanRestoreToATransactionSearchesEachRangeAroundAHole(t *testing.T) {
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	b2, b15 := backupAt("20260101T000000Z", 2, t0), backupAt("20260101T010000Z", 15, t0)
	a := fakeArchive(t, 2, 20, t0, b2, b15)
	a.Storage.Delete(context.Background(), SegmentKey(1, 12, seg1M))
	for seg, backup := range map[uint64]string{8: b2.ID, 11: b2.ID, 16: b15.ID} {
		if p, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(seg), 0)}); err != nil || p.Backup.ID != backup || p.LastXactLSN != SegmentStartLSN(seg, seg1M)+fakeCommitOff {
			t.Errorf("xid %d: backup %s, commit at %s, %v; want backup %s", xidAt(seg), p.Backup.ID, p.LastXactLSN, err, backup)
		}
	}
	_, err := planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(12), 0)})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "scanned 0/200000 to 0/C00000, then 0/F00000 to 0/1500000") {
		t.Errorf("a commit in the lost segment: %v; want a refusal naming both stretches searched", err)
	}
	// A lower bound after the hole searches only the range after it.
	_, err = planAt(t, a, RestoreRequest{Target: xidTarget(xidAt(8), SegmentStartLSN(13, seg1M))})
	if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "(scanned 0/F00000 to 0/1500000)") {
		t.Errorf("a lower bound after the hole: %v; want only the range after it searched", err)
	}
}
