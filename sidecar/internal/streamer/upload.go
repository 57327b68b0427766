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
	writer := s.mayUploadLocked()
	s.mu.Unlock()
	if !writer {
		return nil, time.Time{}, nil // not the archive's writer (yet, or any more)
	}
	// The next segment's tail goes up only after the queued segments are stored: were it
	// stored first, a listing would show the segment before it missing, a hole that is not
	// one (issue 19). Complete segments may land in any order: Graph.Reach reads up to
	// MaxUploadsInFlight of them past a missing one as the live end.
	if batch, first, queued := s.spool.head(endedParallel, s.segSize); queued > 0 {
		if len(batch) > 1 {
			return func() error { return s.uploadBatch(ctx, batch) }, time.Time{}, nil
		}
		return func() error { return s.uploadEnded(ctx, first) }, time.Time{}, nil
	}
	cur, n := s.spool.current()
	pending, due, at := s.tail.due(cur, n, s.cfg.Now(), s.cfg.PartialInterval)
	if !pending {
		return nil, time.Time{}, nil
	}
	if !due {
		return nil, at, nil
	}
	return func() error { return s.uploadPartial(ctx, cur, n, true) }, time.Time{}, nil
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
		s.spool.drop(seg)
		return nil
	}
	if err := s.storeComplete(ctx, seg); err != nil {
		return err
	}
	s.finishComplete(ctx, seg)
	return nil
}

// uploadBatch stores complete segments from the head of the queue at once, then
// acknowledges them in order, up to the first that failed.
func (s *Streamer) uploadBatch(ctx context.Context, batch []*segment) error {
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	for i, seg := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.storeComplete(ctx, seg)
		}()
	}
	wg.Wait()
	for i, seg := range batch {
		if errs[i] != nil {
			return errs[i] // the later ones are found stored on the retry
		}
		s.finishComplete(ctx, seg)
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
	s.spool.drop(seg)
	s.tail.forget(seg)
	go func() {
		if err := s.archive.Storage.Delete(ctx, walarchive.PartialKey(seg.tli, seg.segno, s.segSize)); err != nil && ctx.Err() == nil {
			s.log.Warn("could not delete superseded partial", "segment", walarchive.SegmentName(seg.tli, seg.segno, s.segSize), "err", err)
		}
	}()
}

// uploadPartial stores the first n bytes of seg as its partial, unless a partial at least
// that long is already stored, and with ack set acknowledges them.
func (s *Streamer) uploadPartial(ctx context.Context, seg *segment, n uint64, ack bool) error {
	stored, known := s.tail.storedLen(seg) // known: also none stored when the timeline was listed
	if !known {
		// Before the first partial of a segment in this process, learn how long the stored
		// one is (an earlier run may have stored more): a partial only ever grows.
		var err error
		if stored, err = s.storedPartialLength(ctx, seg.tli, seg.segno); err != nil {
			s.noteStorage(metrics.KindPartial, err)
			return err
		}
		s.tail.setStored(seg, stored, true)
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
	s.tail.setStored(seg, n, false)
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
