package streamer

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/walarchive"
)

// uploader stores ended segments in order, and the tail of the current segment as a
// partial, retrying storage errors with backoff. It runs until ctx ends.
//
// The tail goes up as soon as bytes are pending and the previous upload has finished, but
// a partial starts at most every PartialInterval: there is no fixed tick. A byte that
// arrives during an upload is then durable at most one interval (or, when uploads take
// longer than the interval, one upload) after that upload ends, so the archive lag stays
// under the interval plus one upload, and under two uploads on a store slower than the
// interval. At a segment's end the complete segment and the next segment's tail go up
// together, so the boundary costs one upload, not two. Each partial re-sends its segment
// from the start (an object is written whole), so PartialInterval is also what bounds the
// upload amplification: at most one partial, of at most one segment, per interval.
func (s *Streamer) uploader(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-s.archiveSet:
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	// A slow safety poll only: new bytes and ended segments wake the uploader, and a tail
	// that is pending but not due yet sets a timer for the moment it is.
	safety := time.NewTicker(250 * time.Millisecond)
	defer safety.Stop()
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		job, at, err := s.nextJob(ctx)
		if err == nil && job == nil {
			due.Stop()
			var dueC <-chan time.Time
			if !at.IsZero() {
				due.Reset(max(at.Sub(s.cfg.Now()), 0))
				dueC = due.C
			}
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			case <-dueC:
			case <-safety.C:
			}
			continue
		}
		if err == nil {
			err = job()
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := bo.NextBackOff()
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		bo.Reset()
	}
}

// nextJob picks the next upload: the oldest ended segment, else the current tail when a
// partial is due. Without a job it returns when a pending tail falls due (zero when no
// tail is pending).
func (s *Streamer) nextJob(ctx context.Context) (func() error, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mayUploadLocked() {
		return nil, time.Time{}, nil // not the archive's writer (yet, or any more)
	}
	if len(s.queue) > 0 {
		var batch []*segment
		for _, seg := range s.queue {
			if seg.written < s.segSize || len(batch) == endedParallel {
				break
			}
			batch = append(batch, seg)
		}
		// The next segment's tail goes up only after the queued segments are stored: were
		// it stored first, a listing would show the segment before it missing, a hole that
		// is not one (issue 19). Complete segments may land in any order: Graph.Reach reads
		// up to MaxUploadsInFlight of them past a missing one as the live end.
		if len(batch) > 1 {
			return func() error { return s.uploadBatch(ctx, batch, nil, 0) }, time.Time{}, nil
		}
		seg := s.queue[0]
		return func() error { return s.uploadEnded(ctx, seg) }, time.Time{}, nil
	}
	cur := s.cur
	if !s.tailPendingLocked() {
		return nil, time.Time{}, nil
	}
	if !s.tailDueLocked() {
		return nil, s.lastPartialAt.Add(s.cfg.PartialInterval), nil
	}
	n := cur.written
	s.lastPartialAt = s.cfg.Now()
	return func() error { return s.uploadPartial(ctx, cur, n, true) }, time.Time{}, nil
}

// tailPendingLocked reports whether the current segment has bytes its stored partial
// lacks.
func (s *Streamer) tailPendingLocked() bool {
	cur := s.cur
	return cur != nil && cur.written > 0 && cur.written > s.partialStored[[2]uint64{uint64(cur.tli), cur.segno}]
}

// tailDueLocked reports whether the current segment's tail is pending and may go up now.
func (s *Streamer) tailDueLocked() bool {
	return s.tailPendingLocked() && (s.draining || !s.cfg.Now().Before(s.lastPartialAt.Add(s.cfg.PartialInterval)))
}

// endedParallel is how many complete segments are uploaded at once when several are
// queued (a backlog after an outage or a restart): a store a round trip away is then
// limited by round trips, not by bandwidth. Memory grows by about one compressed segment
// and a 4 MiB pipe per upload.
const endedParallel = walarchive.MaxUploadsInFlight

// uploadEnded stores a segment that receives no more bytes: under its final name when it
// is complete, as a partial when its timeline ended inside it.
func (s *Streamer) uploadEnded(ctx context.Context, seg *segment) error {
	if seg.written < s.segSize {
		if err := s.uploadPartial(ctx, seg, seg.written, true); err != nil {
			return err
		}
		s.dropEnded(seg)
		return nil
	}
	if err := s.storeComplete(ctx, seg); err != nil {
		return err
	}
	s.finishComplete(ctx, seg)
	return nil
}

// uploadBatch stores complete segments from the head of the queue at once, and with them,
// when tail is set, the first tailN bytes of the current segment as its partial; then it
// acknowledges them in order, up to the first that failed. The tail is acknowledged only
// when every segment before it was.
func (s *Streamer) uploadBatch(ctx context.Context, batch []*segment, tail *segment, tailN uint64) error {
	errs := make([]error, len(batch))
	var tailErr error
	var wg sync.WaitGroup
	for i, seg := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.storeComplete(ctx, seg)
		}()
	}
	if tail != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tailErr = s.uploadPartial(ctx, tail, tailN, false)
		}()
	}
	wg.Wait()
	for i, seg := range batch {
		if errs[i] != nil {
			if tail != nil && tailErr == nil {
				// Stored but not acknowledged: have the tail uploaded (and acknowledged)
				// again once the segments before it are. Its next upload is at least
				// tailN long, as long as anything stored, so the partial still only grows.
				s.mu.Lock()
				s.partialStored[[2]uint64{uint64(tail.tli), tail.segno}] = 0
				s.mu.Unlock()
			}
			return errs[i] // the later ones are found stored on the retry
		}
		s.finishComplete(ctx, seg)
	}
	if tail != nil {
		if tailErr != nil {
			return tailErr
		}
		s.advance(walarchive.SegmentStartLSN(tail.segno, s.segSize)+walarchive.LSN(tailN), tail.gen)
	}
	return nil
}

// storeComplete stores a complete segment under its final name. It does not acknowledge
// it: finishComplete does, in order.
func (s *Streamer) storeComplete(ctx context.Context, seg *segment) error {
	f, err := os.Open(seg.path)
	if err != nil {
		return err
	}
	key := walarchive.SegmentKey(seg.tli, seg.segno, s.segSize)
	res, err := s.archive.PutImmutable(ctx, key, f)
	f.Close()
	s.noteStorage(metrics.KindSegment, err)
	if errors.Is(err, walarchive.ErrConflict) {
		// Never overwrite, and never acknowledge WAL whose archived copy differs: the
		// stored object is kept, archiving stops here (the slot keeps the WAL on the
		// server), readiness fails and upload errors count until someone looks.
		s.log.Error("archived segment differs from the server's; the stored object is kept and archiving is stalled", "key", key, "err", err)
		return err
	}
	if err != nil {
		return err
	}
	s.countUpload(metrics.KindSegment, res)
	s.m.LastArchivedSegment.Set(float64(s.cfg.Now().Unix()))
	return nil
}

// finishComplete acknowledges a stored complete segment, drops it from the queue and
// deletes its superseded partial in the background: the next upload (often the next
// segment's tail) need not wait a round trip for it. A partial left behind when the
// process ends is harmless: the complete segment is what is read.
func (s *Streamer) finishComplete(ctx context.Context, seg *segment) {
	s.advance(walarchive.SegmentStartLSN(seg.segno+1, s.segSize), seg.gen)
	s.dropEnded(seg)
	s.mu.Lock()
	delete(s.partialStored, [2]uint64{uint64(seg.tli), seg.segno})
	s.mu.Unlock()
	go func() {
		if err := s.archive.Storage.Delete(ctx, walarchive.PartialKey(seg.tli, seg.segno, s.segSize)); err != nil && ctx.Err() == nil {
			s.log.Warn("could not delete superseded partial", "segment", walarchive.SegmentName(seg.tli, seg.segno, s.segSize), "err", err)
		}
	}()
}

// dropEnded removes an archived ended segment from the spool and the queue's head.
func (s *Streamer) dropEnded(seg *segment) {
	os.Remove(seg.path)
	s.mu.Lock()
	if len(s.queue) > 0 && s.queue[0] == seg {
		s.queue = s.queue[1:]
	}
	s.mu.Unlock()
}

// uploadPartial stores the first n bytes of seg as its partial, unless a partial at least
// that long is already stored, and with ack set acknowledges them.
func (s *Streamer) uploadPartial(ctx context.Context, seg *segment, n uint64, ack bool) error {
	key := [2]uint64{uint64(seg.tli), seg.segno}
	s.mu.Lock()
	stored, known := s.partialStored[key]
	if from, listed := s.noPartialFrom[seg.tli]; !known && listed && seg.segno >= from {
		known = true // none was stored when this process listed the timeline
	}
	s.mu.Unlock()
	if !known {
		// Before the first partial of a segment in this process, learn how long the stored
		// one is (an earlier run may have stored more): a partial only ever grows.
		var err error
		if stored, err = s.storedPartialLength(ctx, seg.tli, seg.segno); err != nil {
			s.noteStorage(metrics.KindPartial, err)
			return err
		}
		s.mu.Lock()
		if stored > s.partialStored[key] {
			s.partialStored[key] = stored
		}
		s.mu.Unlock()
	}
	if n <= stored {
		return nil
	}
	f, err := os.Open(seg.path)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := s.archive.Put(ctx, walarchive.PartialKey(seg.tli, seg.segno, s.segSize), io.LimitReader(f, int64(n)))
	s.noteStorage(metrics.KindPartial, err)
	if err != nil {
		return err
	}
	s.countUpload(metrics.KindPartial, res)
	s.mu.Lock()
	s.partialStored[key] = n
	s.mu.Unlock()
	if ack {
		s.advance(walarchive.SegmentStartLSN(seg.segno, s.segSize)+walarchive.LSN(n), seg.gen)
	}
	return nil
}

func (s *Streamer) countUpload(kind string, res walarchive.PutResult) {
	s.m.Uploads.WithLabelValues(kind).Inc()
	s.m.UploadedBytes.WithLabelValues("raw").Add(float64(res.RawBytes))
	s.m.UploadedBytes.WithLabelValues("compressed").Add(float64(res.StoredBytes))
}

// advance moves the archived position forward, for WAL received by the current session,
// and tells the receiver to acknowledge it.
func (s *Streamer) advance(to walarchive.LSN, gen uint64) {
	if archived, moved := s.ack.advance(to, gen); moved {
		s.m.ArchivedLSN.Set(float64(archived))
	}
}
