package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Target is what a restore aims for: the end of the archive, a moment in time, or the
// commit of one transaction.
type Target struct {
	Latest bool
	Time   time.Time
	// Xid, when not 0, makes the target the commit record of this transaction: its 32-bit
	// id as WAL record headers carry it (txid_current()'s value modulo 2^32).
	Xid uint32
	// XidGiven is the transaction id as given: Xid, or the 64-bit value txid_current()
	// returns (epoch << 32 | xid), which String repeats.
	XidGiven uint64
	// XidFrom is where the search for the transaction's commit starts (0: at the stop of
	// the oldest usable backup): an LSN taken inside the transaction, such as
	// pg_current_wal_lsn(), so that an older transaction with the same 32-bit id (2^32
	// transactions earlier) is never taken for it.
	XidFrom LSN
}

// IsXid reports whether the target is the commit of a transaction.
func (t Target) IsXid() bool { return t.Xid != 0 }

// String formats the target as it was given.
func (t Target) String() string {
	switch {
	case t.Latest:
		return "latest"
	case t.IsXid() && t.XidFrom != 0:
		return fmt.Sprintf("xid:%d@%s", t.XidGiven, t.XidFrom)
	case t.IsXid():
		return fmt.Sprintf("xid:%d", t.XidGiven)
	}
	return t.Time.Format(time.RFC3339Nano)
}

// TargetForms names the forms ParseTarget accepts, for errors and help.
const TargetForms = "'latest' or an RFC 3339 time with a zone, like 2026-11-24T10:30:00Z, or xid:<N>[@<LSN>], the commit of transaction N (as txid_current() returns it) searched from LSN (as pg_current_wal_lsn() returns it inside the transaction), like xid:4711@0/16B3748"

// ParseTarget parses "latest", an RFC 3339 time with an explicit zone ("Z" or an offset),
// or "xid:<N>" / "xid:<N>@<LSN>". A time without a zone is refused: it would mean a
// different instant on every machine.
//
// N is a transaction id in decimal: a 32-bit id greater than 2 (0, 1 and 2 are never
// assigned to a transaction), or the 64-bit value txid_current() returns, of which only the
// low 32 bits (the id WAL records carry) are used: the epoch above them is not in WAL. LSN
// is in PostgreSQL's X/Y form; the commit is searched from there on.
func ParseTarget(s string) (Target, error) {
	if s == "latest" {
		return Target{Latest: true}, nil
	}
	if rest, ok := strings.CutPrefix(s, "xid:"); ok {
		return parseXidTarget(s, rest)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		hint := ""
		if _, err2 := time.Parse("2006-01-02T15:04:05", strings.TrimSuffix(s, "Z")); err2 == nil || strings.Count(s, ":") == 2 && !strings.ContainsAny(s[10:], "Z+-") {
			hint = " (it has no time zone: add Z for UTC or an offset such as +02:00)"
		}
		return Target{}, fmt.Errorf("invalid restore target %q%s: expected %s", s, hint, TargetForms)
	}
	return Target{Time: t}, nil
}

// parseXidTarget parses rest, what follows "xid:" in s.
func parseXidTarget(s, rest string) (Target, error) {
	const forms = "expected xid:<N> or xid:<N>@<LSN>, N a transaction id in decimal (greater than 2; a 64-bit txid_current() value is taken modulo 2^32) and LSN in PostgreSQL's X/Y form, like xid:4711@0/16B3748"
	num, lsn, hasLSN := strings.Cut(rest, "@")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return Target{}, fmt.Errorf("invalid restore target %q: transaction id %q is not a decimal number: %s", s, num, forms)
	}
	xid := uint32(n) // the low 32 bits: what WAL record headers carry
	if xid <= 2 {
		low := ""
		if uint64(xid) != n {
			low = fmt.Sprintf(" (%d in 32 bits)", xid)
		}
		return Target{}, fmt.Errorf("invalid restore target %q: transaction id %d%s is not one PostgreSQL assigns to a transaction (0, 1 and 2 are reserved): %s", s, n, low, forms)
	}
	t := Target{Xid: xid, XidGiven: n}
	if hasLSN {
		l, err := ParseLSN(lsn)
		if err != nil {
			return Target{}, fmt.Errorf("invalid restore target %q: %w: %s", s, err, forms)
		}
		t.XidFrom = l
	}
	return t, nil
}

// RestoreRequest asks for a restore plan.
type RestoreRequest struct {
	Target Target
	// BackupID forces a backup; empty picks the newest that ends at or before the target.
	BackupID string
	// Timeline is the timeline to recover along; 0 means the newest in the archive.
	Timeline uint32
}

// StopKind says how recovery ends.
type StopKind int

const (
	// StopAtEnd replays all WAL of the timeline (target "latest").
	StopAtEnd StopKind = iota
	// StopAtTime stops before the first transaction that ended after the target: the
	// archive holds such a transaction on the path, so recovery provably stops there.
	StopAtTime
	// StopAtLSN stops right after LastXactLSN, the last transaction of the path that ended
	// by the target: no later one is archived yet, and WAL archived while recovery runs must
	// not be replayed. For an xid target, LastXactLSN is that transaction's commit record.
	StopAtLSN
	// StopImmediate stops as soon as the backup is consistent: no transaction ended between
	// the backup's stop and the target.
	StopImmediate
)

func (k StopKind) String() string {
	return [...]string{"end of WAL", "time", "LSN", "end of backup"}[k]
}

// RestorePlan is a checked restore: every refusal happens while planning, before anything
// at the destination is touched.
type RestorePlan struct {
	Backup   BackupRecord
	Timeline uint32
	Target   Target
	// Window is the restorable range that holds the target.
	Window Window
	// LastXact is the last transaction end on the path after the backup's stop (zero if
	// none), and LastXactLSN where its record starts. For an xid target they are the
	// commit of that transaction.
	LastXact    time.Time
	LastXactLSN LSN
	// TargetTime is when the target is: the time of a time target, the commit time of an
	// xid target (zero for latest).
	TargetTime time.Time
	// Stop is how recovery ends; the recovery settings follow from it.
	Stop StopKind
	// NewestTimeline is set when Timeline is the newest in the archive: recovery can then
	// name it 'latest', which a standby later cloned from the restored cluster (inheriting
	// its postgresql.auto.conf) needs to follow the timelines that come after.
	NewestTimeline bool
}

// ErrRestoreRefused is wrapped by every error of PlanRestore that is a decision about
// what the archive holds (the target cannot be reached as asked: outside every range, on
// diverging timelines, no backup, an unknown version), as opposed to a failure to read
// the archive: asking again gives the same answer until the archive changes. The
// sidecar's dry-run plan endpoint answers such an error 422, a read failure 503.
var ErrRestoreRefused = errors.New("restore refused by the planner")

// refusal is an error of PlanRestore's own judgement; its text is the judgement's.
type refusal struct{ error }

func (r refusal) Unwrap() []error { return []error{r.error, ErrRestoreRefused} }

// refused marks err as a refusal (ErrRestoreRefused).
func refused(err error) error { return refusal{err} }

// ErrAmbiguousTimeline is returned (wrapped) when a target time lies on more than one
// timeline with different histories at that time: --timeline must choose.
var ErrAmbiguousTimeline = errors.New("the target time lies on more than one timeline")

// PlanRestore chooses the timeline, the backup and how recovery stops, and refuses, naming
// why and what to pass instead, whenever it cannot show that recovery stops exactly at the
// target: a target outside every restorable range, on two diverging timelines, or WAL it
// cannot read.
func (a *Archive) PlanRestore(ctx context.Context, req RestoreRequest, now time.Time) (RestorePlan, error) {
	v, err := LookupPGVersion(a.Identity.PostgresVersion)
	if err != nil {
		return RestorePlan{}, refused(fmt.Errorf("cannot plan a restore from this archive: %w", err))
	}
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return RestorePlan{}, err
	}
	if len(g.Backups) == 0 {
		return RestorePlan{}, refused(errors.New("the archive has no complete base backup to restore from"))
	}
	if len(g.Timelines) == 0 {
		return RestorePlan{}, refused(errors.New("the archive has no WAL"))
	}
	if req.Timeline != 0 && !containsTLI(g.Timelines, req.Timeline) {
		return RestorePlan{}, refused(fmt.Errorf("invalid --timeline %d: the archive has timelines %v", req.Timeline, g.Timelines))
	}
	if !req.Target.Latest && req.Target.Time.After(now) {
		return RestorePlan{}, refused(fmt.Errorf("restore target %s is in the future (now is %s)", req.Target, fmtT(now)))
	}
	if req.Target.IsXid() {
		return a.planXact(ctx, g, req, v)
	}
	// Step 1: the timeline and the range that holds the target.
	tli, r, err := a.chooseRange(ctx, g, req, v)
	if err != nil {
		return RestorePlan{}, err
	}
	p, _ := g.Path(tli)
	// Step 2: the newest backup of that range that ends by the target.
	var chosen *BackupRecord
	for _, b := range g.BackupsOn(p, r) {
		if req.BackupID != "" && b.ID != req.BackupID {
			continue
		}
		if !req.Target.Latest && b.StopTime.After(req.Target.Time) {
			continue
		}
		b := b
		chosen = &b
	}
	if chosen == nil {
		if req.BackupID != "" {
			return RestorePlan{}, refused(fmt.Errorf("backup %s cannot reach target %s on timeline %d: it is not complete, not on that timeline's path, ends after the target, or its WAL does not reach the target (the range holding the target starts with backup %s); omit --backup to choose automatically", req.BackupID, req.Target, tli, r.Backup))
		}
		return RestorePlan{}, refused(fmt.Errorf("no backup on timeline %d's path ends at or before %s with its WAL in the archive", tli, req.Target))
	}
	live, _ := g.Live()
	plan := RestorePlan{Backup: *chosen, Timeline: tli, Target: req.Target, Window: windowOf(r), NewestTimeline: tli == live, TargetTime: req.Target.Time}
	// Step 3: how recovery stops. A time target is written only when a transaction that
	// ended after the target is archived on the path: PostgreSQL then stops before it,
	// whatever WAL is archived later. Otherwise recovery is bounded by what is archived now.
	if req.Target.Latest {
		plan.Stop = StopAtEnd
		return plan, nil
	}
	x, ok, err := a.lastXactIn(ctx, p, chosen.StopLSN.SegmentNo(a.SegmentSize()), r.End, v)
	if err != nil {
		return RestorePlan{}, fmt.Errorf("cannot show where recovery to %s stops: %w; kcbackup verify checks the archive, and --to latest replays all archived WAL of timeline %d without a time target", req.Target, err, tli)
	}
	if ok {
		plan.LastXact, plan.LastXactLSN = x.Time, x.LSN
	}
	switch {
	case ok && x.Time.After(req.Target.Time) && x.LSN < chosen.StopLSN:
		// A transaction that ended after the target is inside the backup (the server's and
		// the sidecar's clocks disagree): recovery cannot stop before it.
		return RestorePlan{}, refused(fmt.Errorf("restore target %s: backup %s holds a transaction that ended at %s, after the target (the clocks of the server and of kcbackup disagree): pass an earlier --backup or a later target", req.Target, chosen.ID, fmtT(x.Time)))
	case ok && x.Time.After(req.Target.Time):
		plan.Stop = StopAtTime
	case ok && x.LSN >= chosen.StopLSN:
		plan.Stop = StopAtLSN
	default:
		plan.Stop = StopImmediate
	}
	return plan, nil
}

// chooseRange picks the timeline and its range that hold the target. Without --timeline,
// a target that lies on several timelines whose histories differ at that time is refused.
func (a *Archive) chooseRange(ctx context.Context, g *Graph, req RestoreRequest, v PGVersion) (uint32, Range, error) {
	tlis := g.Timelines
	if req.Timeline != 0 {
		tlis = []uint32{req.Timeline}
	}
	type candidate struct {
		tli uint32
		r   Range
	}
	var cands []candidate
	var windows []string
	for i := len(tlis) - 1; i >= 0; i-- { // newest first
		rs, err := a.Ranges(ctx, g, tlis[i])
		if err != nil {
			return 0, Range{}, fmt.Errorf("timeline %d: %w", tlis[i], err)
		}
		for _, r := range rs {
			windows = append(windows, fmt.Sprintf("timeline %d: %s to %s", tlis[i], fmtT(r.From), fmtT(r.To)))
		}
		if len(rs) == 0 {
			continue
		}
		if req.Target.Latest {
			if req.Timeline == 0 {
				if anc, child, at, forked := g.ForkedWhileWritten(tlis[i]); forked {
					return 0, Range{}, refused(fmt.Errorf("restore target latest: %w: timeline %d branched from timeline %d at %s while timeline %d was still being archived (its WAL past that point was stored after timeline %d began): two servers wrote into this archive at once, such as a restored copy beside production; pass --timeline %d for timeline %d's history, or --timeline %d for timeline %d's",
						ErrAmbiguousTimeline, child, anc, at, anc, child, anc, anc, tlis[i], tlis[i]))
				}
			}
			return tlis[i], rs[len(rs)-1], nil
		}
		for _, r := range rs {
			if r.Contains(req.Target.Time) {
				cands = append(cands, candidate{tlis[i], r})
			}
		}
	}
	if len(windows) == 0 {
		return 0, Range{}, refused(fmt.Errorf("no backup on timeline %d's path has its WAL in the archive", tlis[len(tlis)-1]))
	}
	if len(cands) == 0 {
		return 0, Range{}, refused(fmt.Errorf("restore target %s: %w (%s)%s", req.Target, errNoRange, strings.Join(windows, "; "), rangeHint(g, req)))
	}
	first := cands[0]
	if req.Timeline != 0 {
		return first.tli, first.r, nil
	}
	pFirst, _ := g.Path(first.tli)
	for _, c := range cands[1:] {
		pc, _ := g.Path(c.tli)
		d, differ := divergence(pFirst, pc)
		if !differ {
			continue
		}
		// Both stop at the same place when a transaction that ended after the target lies
		// before the point where the histories part.
		x, ok, err := a.lastXactBefore(ctx, pFirst, d, first.r, g, v)
		if err != nil {
			return 0, Range{}, fmt.Errorf("restore target %s lies on timelines %d and %d, and their common WAL cannot be read to tell them apart: %w; pass --timeline", req.Target, first.tli, c.tli, err)
		}
		if ok && x.Time.After(req.Target.Time) {
			continue
		}
		return 0, Range{}, refused(fmt.Errorf("restore target %s: %w: timelines %d and %d part at %s and both reach that time with different histories; pass --timeline %d for timeline %d's history, or --timeline %d for timeline %d's",
			req.Target, ErrAmbiguousTimeline, c.tli, first.tli, d, c.tli, c.tli, first.tli, first.tli))
	}
	var inRange []uint32
	for _, c := range cands {
		inRange = append(inRange, c.tli)
	}
	if err := a.refuseHiddenHistory(ctx, g, pFirst, first.r, req, v, first.tli, inRange); err != nil {
		return 0, Range{}, err
	}
	return first.tli, first.r, nil
}

// refuseHiddenHistory refuses a target that another, diverging timeline held too although
// none of its ranges holds it: its WAL goes on past a hole that ends its ranges. Answering
// with timeline p's history would silently give another history than the one the cluster
// had then.
func (a *Archive) refuseHiddenHistory(ctx context.Context, g *Graph, p WALPath, r Range, req RestoreRequest, v PGVersion, chosen uint32, inRange []uint32) error {
	for _, o := range g.Timelines {
		if containsTLI(inRange, o) {
			continue // its ranges hold the target: checked above
		}
		po, err := g.Path(o)
		if err != nil {
			continue
		}
		d, differ := divergence(p, po)
		if !differ || !g.storedSince(o, d.SegmentNo(g.segSize), req.Target.Time) {
			continue
		}
		x, ok, err := a.lastXactBefore(ctx, p, d, r, g, v)
		if err != nil {
			return fmt.Errorf("restore target %s: timelines %d and %d part at %s, and their common WAL cannot be read to tell them apart: %w; pass --timeline", req.Target, chosen, o, d, err)
		}
		if ok && x.Time.After(req.Target.Time) {
			continue // recovery stops before they part: the same on both
		}
		return refused(fmt.Errorf("restore target %s: %w: timeline %d parts from timeline %d at %s, and timeline %d's WAL goes on to that time, past a hole in it, so it cannot be restored there; pass --timeline %d for timeline %d's history, or a time that one of timeline %d's ranges holds (kcbackup list)",
			req.Target, ErrAmbiguousTimeline, chosen, o, d, o, chosen, chosen, o))
	}
	return nil
}

// rangeHint says how a target outside every range relates to them.
func rangeHint(g *Graph, req RestoreRequest) string {
	oldest := g.Backups[0].StopTime
	for _, b := range g.Backups {
		if b.StopTime.Before(oldest) {
			oldest = b.StopTime
		}
	}
	if req.Target.Time.Before(oldest) {
		return ": it is before the oldest usable backup"
	}
	return ": it is after the end of the archive, in a hole in the WAL, or on no timeline's restorable path; pass --to latest, or a time inside a range"
}

// lastXactIn is LastXact with the WAL format of version v.
func (a *Archive) lastXactIn(ctx context.Context, p WALPath, fromSeg uint64, end WALEnd, v PGVersion) (XactRecord, bool, error) {
	return a.lastXact(ctx, p, fromSeg, end, v, 0)
}

// lastXactBefore returns the last transaction on path p before LSN d, scanning back to the
// stop of r's oldest backup.
func (a *Archive) lastXactBefore(ctx context.Context, p WALPath, d LSN, r Range, g *Graph, v PGVersion) (XactRecord, bool, error) {
	bs := g.BackupsOn(p, r)
	from := bs[0].StopLSN.SegmentNo(a.SegmentSize())
	end := r.End
	if ds := d.SegmentNo(a.SegmentSize()); ds < end.LastSegment {
		end.LastSegment = ds
	}
	if end.LastSegment < from {
		return XactRecord{}, false, nil
	}
	return a.lastXact(ctx, p, from, end, v, d)
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
// scanning segments backwards from the end of WAL end. ok is false when there is none.
func (a *Archive) LastXact(ctx context.Context, p WALPath, fromSeg uint64, end WALEnd) (XactRecord, bool, error) {
	v, err := LookupPGVersion(a.Identity.PostgresVersion)
	if err != nil {
		return XactRecord{}, false, err
	}
	return a.lastXact(ctx, p, fromSeg, end, v, 0)
}

// lastXact scans back from end.LastSegment to fromSeg for the last transaction end whose
// record starts before limit (0: no limit). WAL that stops early inside a segment that is
// not the last is an error: valid WAL fills every complete segment.
func (a *Archive) lastXact(ctx context.Context, p WALPath, fromSeg uint64, end WALEnd, v PGVersion, limit LSN) (XactRecord, bool, error) {
	seg := a.SegmentSize()
	var next []byte // the segment after n, already scanned: a record may straddle into it
	for n := end.LastSegment; n >= fromSeg; n-- {
		cur, err := a.fetchSegment(ctx, p, n, "its last transaction")
		if err != nil {
			return XactRecord{}, false, err
		}
		var last XactRecord
		found := false
		validEnd, err := a.scanSegment(p, n, cur, next, v, func(x XactRecord) {
			if limit == 0 || x.LSN < limit {
				last, found = x, true
			}
		})
		if err != nil {
			return XactRecord{}, false, err
		}
		if n < end.LastSegment && validEnd < SegmentStartLSN(n+1, seg) && (limit == 0 || validEnd < limit) {
			return XactRecord{}, false, fmt.Errorf("scan %s: valid WAL ends at %s inside a complete segment: %w", SegmentName(p.TimelineOfSegment(n), n, seg), validEnd, ErrCorrupt)
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

// fetchSegment reads segment n of path p (a complete segment, or the partial at the end);
// what names the purpose of the read in the error.
func (a *Archive) fetchSegment(ctx context.Context, p WALPath, n uint64, what string) ([]byte, error) {
	buf := new(bytes.Buffer)
	name := SegmentName(p.TimelineOfSegment(n), n, a.SegmentSize())
	if _, err := a.FetchWALFile(ctx, name, buf); err != nil {
		return nil, fmt.Errorf("scan %s for %s: %w", name, what, err)
	}
	return buf.Bytes(), nil
}

// scanSegment calls fn for every transaction end whose record starts in segment n (cur),
// reading on into next (the following segment, or nil) for a record that straddles into
// it, and returns where valid WAL ended.
func (a *Archive) scanSegment(p WALPath, n uint64, cur, next []byte, v PGVersion, fn func(XactRecord)) (LSN, error) {
	stream := io.MultiReader(bytes.NewReader(cur), bytes.NewReader(next))
	validEnd, err := ScanXacts(stream, v, n, a.SegmentSize(), fn)
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", SegmentName(p.TimelineOfSegment(n), n, a.SegmentSize()), err)
	}
	return validEnd, nil
}

// planXact plans a restore to the commit of transaction req.Target.Xid: recovery stops
// right after its commit record (recovery_target_lsn at the record, inclusive), so the
// restored cluster holds that transaction and every one that committed before it, and none
// that committed after. PostgreSQL stops "just after" an LSN target with
// recovery_target_inclusive on (Server Configuration, Recovery Target): after replaying the
// first record that starts at or past it, here the commit record itself. The search goes
// on through the ranges after a hole; a commit in lost WAL is refused.
func (a *Archive) planXact(ctx context.Context, g *Graph, req RestoreRequest, v PGVersion) (RestorePlan, error) {
	x := req.Target
	// Step 1: the timeline: --timeline, or the newest with a restorable range, as for
	// latest (a transaction id of one history may be reused on another after they part).
	tli, rs, err := a.xactTimeline(ctx, g, req)
	if err != nil {
		return RestorePlan{}, err
	}
	p, _ := g.Path(tli)
	seg := a.SegmentSize()
	// Step 2: search the path forward, range by range, from the lower bound (or the stop of
	// the range's oldest backup: a commit before it cannot be restored to) to the range's end.
	var scanned []string
	for _, r := range rs {
		bs := g.BackupsOn(p, r)
		from := max(x.XidFrom, bs[0].StopLSN)
		if from.SegmentNo(seg) > r.End.LastSegment {
			continue // the range ends before the lower bound
		}
		rec, found, end, err := a.findXactEnd(ctx, p, from, x.XidFrom, r.End, v, x.Xid)
		if err != nil {
			return RestorePlan{}, fmt.Errorf("cannot search the WAL of timeline %d for the end of transaction %d: %w; kcbackup verify checks the archive", tli, x.Xid, err)
		}
		scanned = append(scanned, fmt.Sprintf("%s to %s", from.SegmentStart(seg), end))
		if !found {
			continue
		}
		if !rec.Commit {
			return RestorePlan{}, refused(fmt.Errorf("restore target %s: transaction %d aborted at %s (its abort record is at %s on timeline %d's path): it has no commit to restore to", x, x.Xid, fmtT(rec.Time), rec.LSN, tli))
		}
		// Step 3: the newest backup of that range that stops at or before the commit.
		var chosen *BackupRecord
		for _, b := range bs {
			if req.BackupID != "" && b.ID != req.BackupID || b.StopLSN > rec.LSN {
				continue
			}
			b := b
			chosen = &b
		}
		if chosen == nil && req.BackupID != "" {
			return RestorePlan{}, refused(fmt.Errorf("backup %s cannot reach target %s, the commit of transaction %d at %s (%s) on timeline %d: it is not complete, not on that timeline's path, stops after the commit, or its WAL does not reach it; omit --backup to choose automatically", req.BackupID, x, x.Xid, rec.LSN, fmtT(rec.Time), tli))
		}
		if chosen == nil {
			return RestorePlan{}, refused(fmt.Errorf("restore target %s: transaction %d committed at %s (%s) on timeline %d, before backup %s, the oldest whose WAL reaches it, stopped (at %s): no backup restores to it", x, x.Xid, rec.LSN, fmtT(rec.Time), tli, bs[0].ID, bs[0].StopLSN))
		}
		live, _ := g.Live()
		return RestorePlan{Backup: *chosen, Timeline: tli, Target: x, Window: windowOf(r), NewestTimeline: tli == live,
			LastXact: rec.Time, LastXactLSN: rec.LSN, TargetTime: rec.Time, Stop: StopAtLSN}, nil
	}
	lower := fmt.Sprintf("the stop of the oldest usable backup (%s)", g.BackupsOn(p, rs[0])[0].StopLSN)
	if x.XidFrom != 0 {
		lower = x.XidFrom.String()
	}
	where := fmt.Sprintf("its WAL ends at %s, before that", rs[len(rs)-1].End.End)
	if len(scanned) > 0 {
		where = "scanned " + strings.Join(scanned, ", then ")
	}
	return RestorePlan{}, refused(fmt.Errorf("restore target %s: no commit or abort record of transaction %d on timeline %d's path from %s on (%s): its commit may not be archived yet (ask again once it is), or the transaction ended before that LSN or on another timeline (--timeline)",
		x, x.Xid, tli, lower, where))
}

// xactTimeline returns the timeline an xid target is searched on and its ranges: req's
// --timeline, or the newest timeline with a restorable range, refused, as for latest, when
// it forked while its parent was still written (two histories, each with its own
// transactions of the same ids).
func (a *Archive) xactTimeline(ctx context.Context, g *Graph, req RestoreRequest) (uint32, []Range, error) {
	tlis := g.Timelines
	if req.Timeline != 0 {
		tlis = []uint32{req.Timeline}
	}
	for i := len(tlis) - 1; i >= 0; i-- { // newest first
		rs, err := a.Ranges(ctx, g, tlis[i])
		if err != nil {
			return 0, nil, fmt.Errorf("timeline %d: %w", tlis[i], err)
		}
		if len(rs) == 0 {
			continue
		}
		if req.Timeline == 0 {
			if anc, child, at, forked := g.ForkedWhileWritten(tlis[i]); forked {
				return 0, nil, refused(fmt.Errorf("restore target %s: %w: timeline %d branched from timeline %d at %s while timeline %d was still being archived: two servers wrote into this archive at once, each with its own transactions; pass --timeline %d or --timeline %d, the timeline the transaction ran on",
					req.Target, ErrAmbiguousTimeline, child, anc, at, anc, anc, tlis[i]))
			}
		}
		return tlis[i], rs, nil
	}
	return 0, nil, refused(fmt.Errorf("no backup on timeline %d's path has its WAL in the archive", tlis[len(tlis)-1]))
}

// findXactEnd scans path p forward from the segment holding from to the end of end for
// the commit or abort record of transaction xid that starts at or after lower. It returns
// the record, whether it was found, and where the scan ended (the end of valid WAL). WAL
// that stops early inside a segment that is not the last is an error.
func (a *Archive) findXactEnd(ctx context.Context, p WALPath, from, lower LSN, end WALEnd, v PGVersion, xid uint32) (XactRecord, bool, LSN, error) {
	seg := a.SegmentSize()
	what := fmt.Sprintf("the end of transaction %d", xid)
	first := from.SegmentNo(seg)
	cur, err := a.fetchSegment(ctx, p, first, what)
	if err != nil {
		return XactRecord{}, false, 0, err
	}
	scannedTo := from
	for n := first; n <= end.LastSegment; n++ {
		var next []byte // a record may straddle into the next segment
		if n < end.LastSegment {
			if next, err = a.fetchSegment(ctx, p, n+1, what); err != nil {
				return XactRecord{}, false, 0, err
			}
		}
		var hit XactRecord
		found := false
		validEnd, err := a.scanSegment(p, n, cur, next, v, func(x XactRecord) {
			if !found && x.Xid == xid && x.LSN >= lower {
				hit, found = x, true
			}
		})
		if err != nil {
			return XactRecord{}, false, 0, err
		}
		if found {
			return hit, true, validEnd, nil
		}
		if n < end.LastSegment && validEnd < SegmentStartLSN(n+1, seg) {
			return XactRecord{}, false, 0, fmt.Errorf("scan %s: valid WAL ends at %s inside a complete segment: %w", SegmentName(p.TimelineOfSegment(n), n, seg), validEnd, ErrCorrupt)
		}
		scannedTo = validEnd
		cur = next
	}
	return XactRecord{}, false, scannedTo, nil
}
