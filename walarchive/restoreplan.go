package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Target is what a restore aims for: the end of the archive, or a moment in time.
type Target struct {
	Latest bool
	Time   time.Time
}

// String formats the target as it was given.
func (t Target) String() string {
	if t.Latest {
		return "latest"
	}
	return t.Time.Format(time.RFC3339Nano)
}

// ParseTarget parses "latest" or an RFC 3339 time with an explicit zone ("Z" or an offset).
// A time without a zone is refused: it would mean a different instant on every machine.
func ParseTarget(s string) (Target, error) {
	if s == "latest" {
		return Target{Latest: true}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		hint := ""
		if _, err2 := time.Parse("2006-01-02T15:04:05", strings.TrimSuffix(s, "Z")); err2 == nil || strings.Count(s, ":") == 2 && !strings.ContainsAny(s[10:], "Z+-") {
			hint = " (it has no time zone: add Z for UTC or an offset such as +02:00)"
		}
		return Target{}, fmt.Errorf("invalid restore target %q%s: expected 'latest' or an RFC 3339 time with a zone, like 2026-11-24T10:30:00Z", s, hint)
	}
	return Target{Time: t}, nil
}

// RestoreRequest asks for a restore plan.
type RestoreRequest struct {
	Target Target
	// BackupID forces a backup; empty picks the newest that ends at or before the target.
	BackupID string
	// Timeline is the timeline to recover along; 0 means the newest in the archive.
	Timeline uint32
}

// RestorePlan is a checked restore: every refusal happens while planning, before anything
// at the destination is touched.
type RestorePlan struct {
	Backup   BackupRecord
	Timeline uint32
	Target   Target
	Window   Window
	// LastXact is the last transaction end in the archive on the path (zero if none), and
	// LastXactLSN where its record starts.
	LastXact    time.Time
	LastXactLSN LSN
	// ReplayToEnd is set when no transaction in the archive ended after the target: recovery
	// then replays all the WAL instead of stopping at a time (PostgreSQL refuses to end
	// recovery before a time target that no record reaches).
	ReplayToEnd bool
}

// PlanRestore picks the backup and checks the target against the recovery window.
func (a *Archive) PlanRestore(ctx context.Context, req RestoreRequest, now time.Time) (RestorePlan, error) {
	backups, _, err := a.Backups(ctx)
	if err != nil {
		return RestorePlan{}, err
	}
	if len(backups) == 0 {
		return RestorePlan{}, errors.New("the archive has no complete base backup to restore from")
	}
	tlis, err := a.Timelines(ctx)
	if err != nil {
		return RestorePlan{}, err
	}
	tli := req.Timeline
	if tli == 0 {
		if len(tlis) == 0 {
			return RestorePlan{}, errors.New("the archive has no WAL")
		}
		tli = tlis[len(tlis)-1]
	} else if !containsTLI(tlis, tli) {
		return RestorePlan{}, fmt.Errorf("invalid --timeline %d: the archive has timelines %v", tli, tlis)
	}
	p, err := a.Path(ctx, tli)
	if err != nil {
		return RestorePlan{}, err
	}
	w, err := a.WindowOf(ctx, tli, backups)
	if err != nil {
		return RestorePlan{}, err
	}
	if !req.Target.Latest {
		t := req.Target.Time
		switch {
		case t.After(now):
			return RestorePlan{}, fmt.Errorf("restore target %s is in the future; the recovery window of timeline %d is %s to %s", req.Target, tli, fmtT(w.Earliest), fmtT(w.Latest))
		case t.Before(w.Earliest):
			return RestorePlan{}, fmt.Errorf("restore target %s is before the oldest usable backup (the recovery window of timeline %d is %s to %s)", req.Target, tli, fmtT(w.Earliest), fmtT(w.Latest))
		case t.After(w.Latest):
			return RestorePlan{}, fmt.Errorf("restore target %s is after the end of the archive (the recovery window of timeline %d is %s to %s)", req.Target, tli, fmtT(w.Earliest), fmtT(w.Latest))
		}
	}
	var chosen *BackupRecord
	for i := range backups {
		b := backups[i]
		if !p.Contains(b.Timeline, b.StopLSN) {
			continue
		}
		if req.BackupID != "" && b.ID != req.BackupID {
			continue
		}
		if !req.Target.Latest && b.StopTime.After(req.Target.Time) {
			continue
		}
		end, err := a.WALReach(ctx, p, b.StartLSN.SegmentNo(a.SegmentSize()))
		if err != nil {
			return RestorePlan{}, err
		}
		if !reaches(end, b.StopLSN, a.SegmentSize()) {
			continue
		}
		chosen = &backups[i] // backups are oldest first: the last match is the newest
	}
	if chosen == nil {
		if req.BackupID != "" {
			return RestorePlan{}, fmt.Errorf("backup %s cannot reach target %s on timeline %d: it is not complete, not on that timeline's path, ends after the target, or its WAL is missing", req.BackupID, req.Target, tli)
		}
		return RestorePlan{}, fmt.Errorf("no backup on timeline %d's path ends at or before %s with its WAL in the archive", tli, req.Target)
	}
	plan := RestorePlan{Backup: *chosen, Timeline: tli, Target: req.Target, Window: *w, ReplayToEnd: req.Target.Latest}
	end, err := a.WALReach(ctx, p, chosen.StartLSN.SegmentNo(a.SegmentSize()))
	if err != nil {
		return RestorePlan{}, err
	}
	x, ok, err := a.LastXact(ctx, p, chosen.StopLSN.SegmentNo(a.SegmentSize()), end)
	if err != nil {
		return RestorePlan{}, err
	}
	if ok {
		plan.LastXact, plan.LastXactLSN = x.Time, x.LSN
	}
	if !req.Target.Latest && (!ok || !x.Time.After(req.Target.Time)) {
		plan.ReplayToEnd = true
	}
	return plan, nil
}

func containsTLI(list []uint32, t uint32) bool {
	for _, x := range list {
		if x == t {
			return true
		}
	}
	return false
}

func fmtT(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// LastXact returns the last commit or abort on the path at or after segment fromSeg,
// scanning segments backwards from the end of the archive. ok is false when there is none.
func (a *Archive) LastXact(ctx context.Context, p WALPath, fromSeg uint64, end WALEnd) (XactRecord, bool, error) {
	seg := a.SegmentSize()
	var next []byte // the segment after n, already scanned: a record may straddle into it
	for n := end.LastSegment; n >= fromSeg; n-- {
		buf := new(bytes.Buffer)
		name := SegmentName(p.TimelineOfSegment(n), n, seg)
		if _, err := a.FetchWALFile(ctx, name, buf); err != nil {
			return XactRecord{}, false, fmt.Errorf("scan %s for its last transaction: %w", name, err)
		}
		cur := buf.Bytes()
		var last XactRecord
		found := false
		stream := io.MultiReader(bytes.NewReader(cur), bytes.NewReader(next))
		if _, err := ScanXacts(stream, n, seg, func(x XactRecord) { last, found = x, true }); err != nil {
			return XactRecord{}, false, err
		}
		if found {
			return last, true, nil
		}
		if n == 0 {
			break
		}
		next = cur
	}
	return XactRecord{}, false, nil
}
