package streamer

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

// The streamer has three rooms, each owning its state under its own lock (as raft keeps its
// log, state machine and commitment tracker apart):
//   - the receiver (receive.go) writes WAL from the server into the spool;
//   - the uploader (upload.go) stores what the spool holds, in order, and owns what it knows
//     of the stored tails (tailState);
//   - the acknowledgement tracker (ack.go) decides what may be reported to the server.
//
// The spool below is the hand-off between the first two: the segment being received and
// the ended segments waiting for upload. None of these locks is held while another is
// taken.

// segment is one WAL segment in the spool.
type segment struct {
	tli   uint32
	segno uint64
	path  string
	f     *os.File // open while receiving; only the receiver writes it
	// written is how many bytes were received (guarded by the spool's lock).
	written uint64
	// gen is the session that received it: only the current session's uploads move the
	// acknowledged position (an older session's WAL may be another history at the same LSNs).
	gen uint64
	// ended is set when the segment will receive no more bytes: complete, or cut short at
	// the end of its timeline (then it is stored as a partial).
	ended bool
}

// spool holds received WAL until it is uploaded: the current segment and the queue of
// ended ones, oldest first, each in its own file under dir.
type spool struct {
	dir string

	mu    sync.Mutex
	seq   uint64
	cur   *segment
	queue []*segment
	// limit bounds the spool; past it the receiver pauses (the slot keeps the WAL).
	limit int64
}

// open starts receiving segment segno of timeline tli into a new file. A unique file per
// opening: after a reconnect the same segment is received again while the previous
// session's copy may still wait in the queue.
func (sp *spool) open(tli uint32, segno, segSize, gen uint64) (*segment, error) {
	name := walarchive.SegmentName(tli, segno, segSize)
	sp.mu.Lock()
	sp.seq++
	p := filepath.Join(sp.dir, fmt.Sprintf("%s.%d", name, sp.seq))
	sp.mu.Unlock()
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool segment %s: %w", name, err)
	}
	seg := &segment{tli: tli, segno: segno, path: p, f: f, gen: gen}
	sp.mu.Lock()
	sp.cur = seg
	sp.mu.Unlock()
	return seg, nil
}

// write appends received bytes to seg.
func (sp *spool) write(seg *segment, p []byte) error {
	if _, err := seg.f.Write(p); err != nil {
		return fmt.Errorf("write spool segment %s: %w", seg.path, err)
	}
	sp.mu.Lock()
	seg.written += uint64(len(p))
	sp.mu.Unlock()
	return nil
}

// end hands a segment that will receive no more bytes to the queue (an empty one is
// removed).
func (sp *spool) end(seg *segment) {
	seg.f.Close()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	seg.ended = true
	if sp.cur == seg {
		sp.cur = nil
	}
	if seg.written > 0 {
		sp.queue = append(sp.queue, seg)
	} else {
		os.Remove(seg.path)
	}
}

// current returns the segment being received (nil: none) and how much it holds.
func (sp *spool) current() (*segment, uint64) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.cur == nil {
		return nil, 0
	}
	return sp.cur, sp.cur.written
}

// written returns how much seg holds.
func (sp *spool) written(seg *segment) uint64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return seg.written
}

// head returns up to n complete segments from the queue's head, and the queue's head
// (nil when empty) and length.
func (sp *spool) head(n int, segSize uint64) (complete []*segment, first *segment, queued int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, seg := range sp.queue {
		if seg.written < segSize || len(complete) == n {
			break
		}
		complete = append(complete, seg)
	}
	if len(sp.queue) > 0 {
		first = sp.queue[0]
	}
	return complete, first, len(sp.queue)
}

// drop removes an archived segment from the queue's head and its file.
func (sp *spool) drop(seg *segment) {
	os.Remove(seg.path)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.queue) > 0 && sp.queue[0] == seg {
		sp.queue = sp.queue[1:]
	}
}

// clear drops every queued segment (a fenced writer's) and reports how many bytes they held.
func (sp *spool) clear() uint64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var n uint64
	for _, seg := range sp.queue {
		n += seg.written
		os.Remove(seg.path)
	}
	sp.queue = nil
	return n
}

// bytes is what the spool holds; over reports whether that is past its limit.
func (sp *spool) bytes() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var n int64
	for _, q := range sp.queue {
		n += int64(q.written)
	}
	if sp.cur != nil {
		n += int64(sp.cur.written)
	}
	return n
}

func (sp *spool) over() bool {
	n := sp.bytes()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return n > sp.limit
}

func (sp *spool) setLimit(n int64) {
	sp.mu.Lock()
	sp.limit = n
	sp.mu.Unlock()
}

// tailState is what the uploader knows of the stored tails: how far each segment's run of
// parts from its first byte reaches, which timelines had none when listed, and when the
// last tail upload started.
type tailState struct {
	mu sync.Mutex
	// stored is where the stored run of (tli, segno)'s tail parts ends.
	stored map[[2]uint64]uint64
	// noPartialFrom[tli] is a segment number from which timeline tli had no tail stored
	// when this process listed it at the start of streaming tli: a later segment's first
	// part needs no listing of stored ones (the slot lets only this process stream it).
	noPartialFrom map[uint32]uint64
	lastAt        time.Time
	// lastSeg is the segment the last tail upload was of: a new segment's first tail is
	// due at once.
	lastSeg  [2]uint64
	draining bool
}

func newTailState() *tailState {
	return &tailState{stored: map[[2]uint64]uint64{}, noPartialFrom: map[uint32]uint64{}}
}

func segKey(seg *segment) [2]uint64 { return [2]uint64{uint64(seg.tli), seg.segno} }

// due reports whether seg's bytes from `from` (stored or in flight before it) up to n are
// pending and may go up at now (at most every interval per segment, at once while
// draining); when due, it records the start.
func (ts *tailState) due(seg *segment, from, n uint64, now time.Time, interval time.Duration) (pending, due bool, at time.Time) {
	if seg == nil || n <= from {
		return false, false, time.Time{}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	k := segKey(seg)
	if k != ts.lastSeg {
		ts.lastSeg, ts.lastAt = k, time.Time{}
	}
	next := ts.lastAt.Add(interval)
	if !ts.draining && now.Before(next) {
		return true, false, next
	}
	ts.lastAt = now
	return true, true, time.Time{}
}

// storedLen returns what is known of seg's stored partial: its length, and whether it is
// known (or known absent from a listing) without reading the store.
func (ts *tailState) storedLen(seg *segment) (uint64, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n, known := ts.stored[segKey(seg)]
	if from, listed := ts.noPartialFrom[seg.tli]; !known && listed && seg.segno >= from {
		known = true
	}
	return n, known
}

// setStored records that seg's partial is n bytes long; with grow, only a longer length
// replaces the known one.
func (ts *tailState) setStored(seg *segment, n uint64, grow bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	k := segKey(seg)
	if have, known := ts.stored[k]; !grow || !known || n > have {
		ts.stored[k] = n
	}
}

// forget drops what is known of seg's partial (its complete segment is stored).
func (ts *tailState) forget(seg *segment) {
	ts.mu.Lock()
	delete(ts.stored, segKey(seg))
	ts.mu.Unlock()
}

// listed records what a listing of timeline tli found (ok false: the listing failed).
func (ts *tailState) listed(tli uint32, from uint64, ok bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.noPartialFrom, tli)
	if ok {
		ts.noPartialFrom[tli] = from
	}
}

func (ts *tailState) setDraining() {
	ts.mu.Lock()
	ts.draining = true
	ts.mu.Unlock()
}
