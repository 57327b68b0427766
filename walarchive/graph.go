package walarchive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Graph is one reading of the archive's catalog: its complete backups, its timelines with
// their histories, and which WAL objects exist. Restore planning, the recovery windows,
// retention and verify all answer "which backups and WAL lie on this timeline's path, and
// which times can be restored" from it, so they never disagree.
type Graph struct {
	segSize uint64
	// Backups are the complete backups, oldest first (by stop LSN).
	Backups []BackupRecord
	// Problems are backup records that failed verification (not in Backups).
	Problems []error
	// Timelines are the timelines with WAL or a history file, ascending.
	Timelines []uint32
	history   map[uint32]TimelineHistory
	historyOK map[uint32]error
	// historyAt is when each timeline's history file was stored: when the timeline's
	// server started archiving it.
	historyAt map[uint32]time.Time
	wal       map[walPos]walObject
	maxSeg    uint64
}

type walPos struct {
	tli   uint32
	segno uint64
}

type walObject struct {
	complete, partial bool
	// mod is when the newest of the two was stored.
	mod time.Time
}

// ReadGraph lists the archive once and reads every backup record and history file.
func (a *Archive) ReadGraph(ctx context.Context) (*Graph, error) {
	g := &Graph{segSize: a.SegmentSize(), history: map[uint32]TimelineHistory{}, historyOK: map[uint32]error{}, historyAt: map[uint32]time.Time{}, wal: map[walPos]walObject{}}
	var err error
	if g.Backups, g.Problems, err = a.Backups(ctx); err != nil {
		return nil, err
	}
	objs, err := a.Storage.List(ctx, walPrefix)
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	seen := map[uint32]bool{}
	histories := map[uint32]bool{}
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, g.segSize)
		if err != nil {
			continue
		}
		seen[f.Timeline] = true
		if f.Kind == WALFileHistory {
			histories[f.Timeline] = true
			g.historyAt[f.Timeline] = o.ModTime
			continue
		}
		if f.Kind != WALFileSegment {
			continue // tails below
		}
		k := walPos{f.Timeline, f.SegNo}
		g.wal[k] = walObject{complete: true, mod: o.ModTime}
		g.maxSeg = max(g.maxSeg, f.SegNo)
	}
	// A segment stored only as its tail counts as stored when the tail's run from the first
	// byte holds something, and it was stored when the newest part of that run was: a part
	// past a gap (a writer killed with parts in flight) holds no WAL a reader uses, so its
	// time must not move the window's end past commits the archive does not have.
	for k, t := range tailsFromListing(objs, g.segSize) {
		if g.wal[k].complete {
			continue
		}
		for i, p := range t.Parts {
			if !p.Legacy {
				continue
			}
			// A format-2 partial's length is in its trailer, not its name.
			n, err := a.Get(ctx, p.Key, io.Discard)
			switch {
			case errors.Is(err, storage.ErrNotFound):
				continue // completed since the listing: the next reading sees it
			case errors.Is(err, ErrWrongKey) || errors.Is(err, ErrCorrupt):
				n = 1 // unreadable here (recipients only, or damaged): stored, length unknown
			case err != nil:
				return nil, fmt.Errorf("read %s: %w", p.Key, err)
			}
			t.Parts[i].End = uint64(n)
		}
		sortParts(t.Parts)
		run, end := t.Run()
		if end == 0 {
			continue
		}
		e := walObject{partial: true}
		for _, p := range run {
			if p.ModTime.After(e.mod) {
				e.mod = p.ModTime
			}
		}
		g.wal[k] = e
		g.maxSeg = max(g.maxSeg, k.segno)
	}
	// A listing of many keys comes in pages, and is not one moment: a segment completed (and
	// the next one's WAL stored) between two pages shows only its tail on the first page and
	// the next segment's WAL on a later one, a hole that never was. A segment seen only as its
	// tail with later WAL of its timeline after it is therefore looked up once more by its key:
	// a complete segment is never removed but by retention, so finding it now means it was
	// there before the later WAL.
	for k, e := range g.wal {
		if e.complete || !g.laterOnTimeline(k) {
			continue
		}
		switch info, err := a.Storage.Stat(ctx, SegmentKey(k.tli, k.segno, g.segSize)); {
		case err == nil:
			g.wal[k] = walObject{complete: true, mod: info.ModTime}
		case !errors.Is(err, storage.ErrNotFound):
			return nil, fmt.Errorf("look up %s: %w", SegmentKey(k.tli, k.segno, g.segSize), err)
		}
	}
	for t := range seen {
		g.Timelines = append(g.Timelines, t)
	}
	sort.Slice(g.Timelines, func(i, j int) bool { return g.Timelines[i] < g.Timelines[j] })
	for _, t := range g.Timelines {
		if t == 1 {
			continue
		}
		if !histories[t] {
			g.historyOK[t] = fmt.Errorf("timeline %d has WAL but no history file (%s) in the archive", t, HistoryKey(t))
			continue
		}
		g.history[t], g.historyOK[t] = a.History(ctx, t)
	}
	return g, nil
}

// laterOnTimeline reports whether WAL of a later segment of k's timeline is stored.
func (g *Graph) laterOnTimeline(k walPos) bool {
	for o := range g.wal {
		if o.tli == k.tli && o.segno > k.segno {
			return true
		}
	}
	return false
}

// Live is the newest timeline: the one the server archiving into this archive runs on.
func (g *Graph) Live() (uint32, bool) {
	if len(g.Timelines) == 0 {
		return 0, false
	}
	return g.Timelines[len(g.Timelines)-1], true
}

// Path returns the WAL path to timeline tli.
func (g *Graph) Path(tli uint32) (WALPath, error) {
	if err := g.historyOK[tli]; err != nil {
		return WALPath{}, err
	}
	return WALPath{Target: tli, History: g.history[tli], segSize: g.segSize}, nil
}

// ForkedWhileWritten returns, for timeline tli, an ancestor on its path whose WAL past the
// point where the path leaves it was stored after the timeline branching off there had
// archived its history: two servers were writing into the archive at once (a restored copy
// archiving beside production). The answer to "latest" is then not one history.
func (g *Graph) ForkedWhileWritten(tli uint32) (ancestor, child uint32, at LSN, ok bool) {
	h := g.history[tli]
	for i, sw := range h {
		child := tli
		if i+1 < len(h) {
			child = h[i+1].Parent
		}
		born, known := g.historyAt[child]
		if !known {
			continue
		}
		for k, e := range g.wal {
			if k.tli == sw.Parent && e.mod.After(born) && g.pastSwitch(k.segno, e, sw.SwitchPoint) {
				return sw.Parent, child, sw.SwitchPoint, true
			}
		}
	}
	return 0, 0, 0, false
}

// pastSwitch reports whether the parent's WAL object at segment n holds WAL past the
// switch point sp. The segment holding sp is stored as a partial cut short at sp when the
// parent ended there (a promotion, whose sidecar may store it after the child's history):
// only a complete segment there, or any later segment, shows the parent went on.
func (g *Graph) pastSwitch(n uint64, e walObject, sp LSN) bool {
	first := sp.SegmentNo(g.segSize)
	if sp.SegmentOffset(g.segSize) == 0 {
		return n >= first
	}
	return n > first || n == first && e.complete
}

// storedSince reports whether WAL of timeline tli from segment fromSeg on was stored at or
// after t: that timeline was still being written then.
func (g *Graph) storedSince(tli uint32, fromSeg uint64, t time.Time) bool {
	for k, e := range g.wal {
		if k.tli == tli && k.segno >= fromSeg && !e.mod.Before(t) {
			return true
		}
	}
	return false
}

// Has reports whether the WAL of (tli, segno) is stored, complete or as a partial.
func (g *Graph) Has(tli uint32, segno uint64) (complete, partial bool) {
	e := g.wal[walPos{tli, segno}]
	return e.complete, e.partial
}

// Reach walks path p from segment fromSeg and reports how far the WAL is continuous.
func (g *Graph) Reach(p WALPath, fromSeg uint64) WALEnd {
	seg := g.segSize
	onPath := func(n uint64) (walObject, bool) {
		e, ok := g.wal[walPos{p.TimelineOfSegment(n), n}]
		return e, ok
	}
	// Step 1: the continuous run of complete segments from fromSeg, ending at the first
	// missing segment or at a partial (the live tail, or a segment cut short).
	end := WALEnd{End: SegmentStartLSN(fromSeg, seg), LastSegment: fromSeg}
	n := fromSeg
	for ; n <= g.maxSeg; n++ {
		e, ok := onPath(n)
		if !ok {
			break
		}
		end.LastSegment, end.Partial = n, !e.complete
		if e.mod.After(end.LastModified) {
			end.LastModified = e.mod
		}
		if !e.complete {
			end.End = SegmentStartLSN(n, seg)
			n++
			break
		}
		end.End = SegmentStartLSN(n+1, seg)
	}
	// Step 2: WAL on the path after the run means the run ended at a hole, not at the end,
	// unless it is the writer's uploads in flight (see inFlight).
	missing := n
	if end.Partial {
		missing = end.LastSegment
	}
	var after []uint64
	for m := n; m <= g.maxSeg; m++ {
		if _, ok := onPath(m); ok {
			after = append(after, m)
		}
	}
	if len(after) > 0 {
		if g.inFlight(p, missing, after) {
			end.InFlight = true
		} else {
			end.Missing = SegmentName(p.TimelineOfSegment(missing), missing, seg)
		}
	}
	return end
}

// inFlight reports whether the WAL stored after the missing segment is what a writer
// uploading in order stores while the missing one is still on its way: complete segments
// only, at most MaxUploadsInFlight-1 past it (the writer stores up to MaxUploadsInFlight
// ended segments at once and the next tail only after them). That is the live end of the
// archive, not a hole: a listing taken at that moment must not report one. A real hole
// that small at the very end is reported once later WAL lands past it.
func (g *Graph) inFlight(p WALPath, missing uint64, after []uint64) bool {
	for _, m := range after {
		e := g.wal[walPos{p.TimelineOfSegment(m), m}]
		if !e.complete || m >= missing+MaxUploadsInFlight {
			return false
		}
	}
	return true
}

// MaxUploadsInFlight is how many complete segments a writer stores at once (after an
// outage or a restart, to drain a backlog a round trip away); completing in any order,
// they can show as a short gap at the archive's end (Graph.Reach knows this).
const MaxUploadsInFlight = 4

// Range is a stretch of time that restores reach on one timeline's path: from the stop of
// the oldest backup that restores into it to where its WAL stops being continuous (the end
// of the archive, the end of an old timeline, or a hole).
type Range struct {
	Timeline uint32
	// From is the stop time of Backup, the oldest backup that restores into the range.
	From   time.Time
	Backup string
	// To is the last time the range reaches: when its newest WAL was stored, or, for a
	// range that ends at a hole, the time of its last transaction (WAL after it is lost).
	To time.Time
	// End is how far the range's WAL reaches.
	End WALEnd
	// Hole is set when the range ends at missing WAL that later WAL follows.
	Hole bool
}

// Contains reports whether t lies in the range.
func (r Range) Contains(t time.Time) bool { return !t.Before(r.From) && !t.After(r.To) }

// Ranges returns the restorable ranges of timeline tli's path, oldest first. A hole in
// the WAL splits the path into two ranges. The To of a range that ends at a hole is set
// from its WAL by Archive.Ranges; here it is the upload time of its last WAL.
func (g *Graph) Ranges(tli uint32) ([]Range, error) {
	p, err := g.Path(tli)
	if err != nil {
		return nil, err
	}
	var out []Range
	for _, b := range g.Backups {
		if !p.Contains(b.Timeline, b.StopLSN) {
			continue
		}
		end := g.Reach(p, b.StartLSN.SegmentNo(g.segSize))
		if !reaches(end, b.StopLSN, g.segSize) {
			continue // its own WAL is incomplete: it restores nothing
		}
		if n := len(out); n > 0 && out[n-1].End.LastSegment == end.LastSegment {
			continue // the same run of WAL as an older backup: one range
		}
		// The backup's own WAL is archived, so its stop is reachable even when the WAL up to
		// it was stored before the backup recorded its stop time.
		// Bounds are whole microseconds, PostgreSQL's precision, rounded inwards: every
		// time written as PostgreSQL writes it that lies in [From, To] restores.
		from := ceilMicro(b.StopTime)
		to := end.LastModified.Truncate(time.Microsecond)
		if to.Before(from) {
			to = from
		}
		out = append(out, Range{Timeline: tli, From: from, Backup: b.ID, To: to, End: end, Hole: end.Missing != ""})
	}
	return out, nil
}

// ceilMicro rounds t up to a whole microsecond.
func ceilMicro(t time.Time) time.Time {
	if u := t.Truncate(time.Microsecond); u.Before(t) {
		return u.Add(time.Microsecond)
	}
	return t
}

// BackupsOn returns the backups on path p whose WAL run is the one of range r, oldest first.
func (g *Graph) BackupsOn(p WALPath, r Range) []BackupRecord {
	var out []BackupRecord
	for _, b := range g.Backups {
		if !p.Contains(b.Timeline, b.StopLSN) {
			continue
		}
		end := g.Reach(p, b.StartLSN.SegmentNo(g.segSize))
		if reaches(end, b.StopLSN, g.segSize) && end.LastSegment == r.End.LastSegment {
			out = append(out, b)
		}
	}
	return out
}

// Ranges returns the restorable ranges of timeline tli's path with exact ends: a range that
// ends at a hole reaches only as far as its last transaction, read from its WAL (WAL after
// it is lost). The last range of a timeline keeps the upload time of its last WAL as its
// end, even for an old timeline: its last transaction is not when its server stopped, and
// ending it earlier would let a time on two histories look as if it lay on one.
func (a *Archive) Ranges(ctx context.Context, g *Graph, tli uint32) ([]Range, error) {
	rs, err := g.Ranges(tli)
	if err != nil {
		return nil, err
	}
	p, _ := g.Path(tli)
	live, _ := g.Live()
	for i := range rs {
		liveEnd := tli == live && i == len(rs)-1
		if !rs[i].Hole && !rs[i].End.InFlight && !liveEnd {
			continue
		}
		// Ends at a hole, or at uploads still in flight: WAL stored later (the segments
		// past the gap) holds commits after the gap, so the upload time of the last WAL says
		// nothing of what the range reaches; its last transaction does.
		//
		// The live end likewise: a tail part stored at T holds the WAL received when its
		// upload began, not the commits made while it flew, nor those of parts still in
		// flight (or lost, when the writer died). Every commit up to the last archived one
		// is archived; a time after it is not known to be, so the range ends there, and a
		// restore to a later time is refused (--to latest restores everything archived).
		bs := g.BackupsOn(p, rs[i])
		x, ok, err := a.LastXact(ctx, p, bs[0].StopLSN.SegmentNo(a.SegmentSize()), rs[i].End)
		if err != nil {
			if liveEnd && !rs[i].Hole && !rs[i].End.InFlight {
				return nil, fmt.Errorf("timeline %d: the live end of the archive: %w", tli, err)
			}
			return nil, fmt.Errorf("timeline %d: the range before the hole at %s: %w", tli, rs[i].End.Missing, err)
		}
		if ok && x.Time.After(rs[i].From) {
			rs[i].To = x.Time
		} else {
			rs[i].To = rs[i].From // nothing committed after the backup before the hole or end
		}
		if liveEnd {
			// A backup's stop is archived with everything before it: the newest backup's stop
			// time is restorable even when no transaction ended after it.
			for _, b := range bs {
				if stop := b.StopTime.Truncate(time.Microsecond); stop.After(rs[i].To) {
					rs[i].To = stop
				}
			}
		}
	}
	return rs, nil
}

// divergence returns the first LSN at which paths p and q read different timelines, and
// false when they never do (the same path).
func divergence(p, q WALPath) (LSN, bool) {
	var points []LSN
	for _, s := range p.History {
		points = append(points, s.SwitchPoint)
	}
	for _, s := range q.History {
		points = append(points, s.SwitchPoint)
	}
	points = append(points, 0)
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	for _, x := range points {
		if p.History.TimelineOf(x, p.Target) != q.History.TimelineOf(x, q.Target) {
			return x, true
		}
	}
	return 0, false
}

// errNoRange is returned (wrapped) when no range contains a target.
var errNoRange = errors.New("no recovery range contains the target")
