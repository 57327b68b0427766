package streamer

import (
	"context"
	"sync"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

// ackPositions is what the sidecar may report to the server in a standby status update,
// given the end of the WAL this session has made durable in the archive (contiguous from
// where the archive's WAL begins), the end of the WAL received on this connection, and the
// slot's restart_lsn when the session started (floor).
//
// The flush position is what PostgreSQL releases synchronous commits on (and, for a
// physical slot, moves restart_lsn to); the write position is what
// synchronous_commit = remote_write waits for. Both are the archived position, so every
// synchronous_commit level that waits for a standby waits for the archive. Until the
// session has archived up to the floor, the positions are 0 (InvalidXLogRecPtr): the server
// then moves neither the slot (reporting less than restart_lsn would move it backwards) nor
// any waiting commit (reporting the floor would claim WAL this archive never stored).
func ackPositions(archived, received, floor walarchive.LSN) (write, flush walarchive.LSN) {
	flush = min(archived, received)
	if flush < floor || flush == 0 {
		return 0, 0
	}
	return flush, flush
}

// ackTracker is the streamer's acknowledgement room. It owns what may be reported to the
// server: the end of the WAL the current session made durable in the archive (archived),
// the session's generation (an older session's uploads, perhaps of another history at the
// same LSNs, move nothing), the floor (the slot's restart_lsn when the session began), and
// when each received byte arrived (the archive lag). The receiver and the uploader only
// tell it what happened; it decides, under its own lock, what that allows.
type ackTracker struct {
	now func() time.Time

	mu       sync.Mutex
	gen      uint64
	archived walarchive.LSN
	floor    walarchive.LSN
	samples  []sample
	// moved is signalled (without blocking) whenever archived moves forward.
	moved chan struct{}
}

type sample struct {
	end walarchive.LSN
	at  time.Time
}

func newAckTracker(now func() time.Time) *ackTracker {
	return &ackTracker{now: now, moved: make(chan struct{}, 1)}
}

// startSession begins a new generation that streams from start with the slot at floor:
// the archived position starts over there, since only what this session stores is known
// to match the server it streams from. It returns the new generation.
func (t *ackTracker) startSession(start, floor walarchive.LSN) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.archived, t.floor = start, floor
	return t.gen
}

// invalidate ends the current generation without starting a session: uploads in flight
// then acknowledge nothing (a fenced writer).
func (t *ackTracker) invalidate() {
	t.mu.Lock()
	t.gen++
	t.mu.Unlock()
}

// generation is the current session's generation, to stamp received segments with.
func (t *ackTracker) generation() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen
}

// advance records that WAL up to to, received by generation gen, is durable in the
// archive (callers store in order). It reports the archived position and whether it moved.
func (t *ackTracker) advance(to walarchive.LSN, gen uint64) (walarchive.LSN, bool) {
	t.mu.Lock()
	if gen != t.gen || to <= t.archived {
		a := t.archived
		t.mu.Unlock()
		return a, false
	}
	t.archived = to
	t.mu.Unlock()
	select {
	case t.moved <- struct{}{}:
	default:
	}
	return to, true
}

// archivedLSN is the end of the WAL the current session made durable.
func (t *ackTracker) archivedLSN() walarchive.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.archived
}

// positions is what to report to the server, given the end of the WAL received.
func (t *ackTracker) positions(received walarchive.LSN) (write, flush walarchive.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return ackPositions(t.archived, received, t.floor)
}

// noteReceived records when WAL up to pos arrived. Samples closer than 50 ms are merged,
// and a long outage cannot grow them without bound: neighbours are merged keeping the
// earlier time with the later end, so no byte is ever reported younger than it is.
func (t *ackTracker) noteReceived(pos walarchive.LSN) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if k := len(t.samples); k > 0 && now.Sub(t.samples[k-1].at) < 50*time.Millisecond {
		t.samples[k-1].end = pos
	} else {
		t.samples = append(t.samples, sample{end: pos, at: now})
	}
	if len(t.samples) > 8192 {
		merged := t.samples[:0]
		for i := 0; i < len(t.samples); i += 2 {
			m := t.samples[i]
			if i+1 < len(t.samples) {
				m.end = t.samples[i+1].end
			}
			merged = append(merged, m)
		}
		t.samples = merged
	}
}

// lagSeconds is the age of the oldest received byte not yet archived.
func (t *ackTracker) lagSeconds() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.samples) > 0 && t.samples[0].end <= t.archived {
		t.samples = t.samples[1:]
	}
	if len(t.samples) == 0 {
		return 0
	}
	return t.now().Sub(t.samples[0].at).Seconds()
}

// ackKick turns the acknowledgement room's "moved" signal into an interruption of the
// receive in progress, so that the receiver sends the new position at once. Only the
// receiving goroutine writes to the connection; this only cancels its receive.
type ackKick struct {
	mu      sync.Mutex
	pending bool
	cancel  context.CancelFunc
	// moved is signalled (without blocking) on each move, for a receiver that waits
	// without receiving (back-pressure).
	moved chan struct{}
}

// newAckKick watches moved until ctx ends.
func newAckKick(ctx context.Context, moved <-chan struct{}) *ackKick {
	k := &ackKick{moved: make(chan struct{}, 1)}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-moved:
			}
			k.mu.Lock()
			k.pending = true
			if k.cancel != nil {
				k.cancel()
			}
			k.mu.Unlock()
			select {
			case k.moved <- struct{}{}:
			default:
			}
		}
	}()
	return k
}

// receiveContext is the context of one receive: it ends after d, or as soon as the
// archived position moves (at once when it moved since the last take). Call done after.
func (k *ackKick) receiveContext(parent context.Context, d time.Duration) (ctx context.Context, done func()) {
	ctx, cancel := context.WithTimeout(parent, d)
	k.mu.Lock()
	if k.pending {
		cancel()
	} else {
		k.cancel = cancel
	}
	k.mu.Unlock()
	return ctx, func() {
		k.mu.Lock()
		k.cancel = nil
		k.mu.Unlock()
		cancel()
	}
}

// take reports whether the archived position moved since the last take.
func (k *ackKick) take() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.pending
	k.pending = false
	return p
}
