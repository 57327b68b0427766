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

// uploader stores ended segments in order, and the tail of the current segment as
// appended parts, retrying storage errors with backoff. It runs until ctx ends.
//
// Each tail upload stores only the bytes not stored (or in flight) before, as its own
// immutable part (walarchive.PutPart), so an upload costs what arrived since the last one,
// not the segment so far. A part is issued as soon as bytes are pending, at most every
// PartialInterval (at once when it is 0: synchronous mode), with up to maxPartsInFlight
// in flight; they are acknowledged in the order they were issued, so the acknowledged
// position never runs ahead of a stored run from the segment's start (ack.go). A failed
// part invalidates the parts issued after it: the bytes go up again from the end of the
// stored run (overlapping parts are the same WAL; readers use the run, walarchive/tail.go).
// At a segment's end the complete segment goes up once the parts in flight have landed,
// and its parts are removed in the background.
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

// nextJob picks the next upload: the oldest ended segments once no part is in flight,
// else a part of the current tail when one is due. Without a job it returns when a pending
// tail falls due (zero when no tail is pending).
func (s *Streamer) nextJob(ctx context.Context) (func() error, time.Time, error) {
	s.mu.Lock()
	writer := s.mayUploadLocked()
	s.mu.Unlock()
	if !writer {
		return nil, time.Time{}, nil // not the archive's writer (yet, or any more)
	}
	if err := s.parts.takeError(); err != nil {
		return nil, time.Time{}, err // a part failed: back off, then go on from the stored run
	}
	// The next segment's tail goes up only after the queued segments are stored: were it
	// stored first, a listing would show the segment before it missing, a hole that is not
	// one (issue 19). Complete segments may land in any order: Graph.Reach reads up to
	// MaxUploadsInFlight of them past a missing one as the live end.
	if batch, first, queued := s.spool.head(endedParallel, s.segSize); queued > 0 {
		if s.parts.busy() {
			return nil, time.Time{}, nil // the ended segment's parts land first (in order)
		}
		if len(batch) > 1 {
			return func() error { return s.uploadBatch(ctx, batch) }, time.Time{}, nil
		}
		return func() error { return s.uploadEnded(ctx, first) }, time.Time{}, nil
	}
	cur, n := s.spool.current()
	if cur == nil || n == 0 {
		return nil, time.Time{}, nil
	}
	stored, known := s.tail.storedLen(cur)
	if !known {
		// Before the first part of a segment in this process, learn how far the stored run
		// reaches (an earlier run may have stored more): parts continue from there.
		return func() error { return s.learnStored(ctx, cur) }, time.Time{}, nil
	}
	from := max(stored, s.parts.issuedEnd(cur))
	pending, due, at := s.tail.due(cur, from, n, s.cfg.Now(), s.cfg.PartialInterval)
	if !pending || s.parts.full() {
		return nil, time.Time{}, nil // a part that lands wakes the uploader
	}
	if !due {
		return nil, at, nil
	}
	return func() error { s.issuePart(ctx, cur, from, n); return nil }, time.Time{}, nil
}

// endedParallel is how many complete segments are uploaded at once when several are
// queued (a backlog after an outage or a restart): a store a round trip away is then
// limited by round trips, not by bandwidth. Memory grows by about one compressed segment
// and a 4 MiB pipe per upload.
const endedParallel = walarchive.MaxUploadsInFlight

// uploadEnded stores a segment that receives no more bytes: under its final name when it
// is complete, as the last parts of its tail when its timeline ended inside it.
func (s *Streamer) uploadEnded(ctx context.Context, seg *segment) error {
	if seg.written < s.segSize {
		if err := s.uploadTailNow(ctx, seg, seg.written); err != nil {
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
	start := time.Now()
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
	s.m.UploadSeconds.WithLabelValues(metrics.KindSegment).Observe(time.Since(start).Seconds())
	s.m.LastArchivedSegment.Set(float64(s.cfg.Now().Unix()))
	return nil
}

// finishComplete acknowledges a stored complete segment, drops it from the queue and
// removes its tail parts in the background: the next upload (often the next segment's
// tail) need not wait for them. Parts left behind when the process ends are harmless: the
// complete segment is what is read, and retention removes them with it.
func (s *Streamer) finishComplete(ctx context.Context, seg *segment) {
	s.advance(walarchive.SegmentStartLSN(seg.segno+1, s.segSize), seg.gen)
	s.spool.drop(seg)
	s.tail.forget(seg)
	go func() {
		if err := s.archive.DeleteTail(ctx, seg.tli, seg.segno); err != nil && ctx.Err() == nil {
			s.log.Warn("could not remove the superseded tail parts", "segment", walarchive.SegmentName(seg.tli, seg.segno, s.segSize), "err", err)
		}
	}()
}

// learnStored finds how far seg's stored tail reaches, from a listing of its parts.
func (s *Streamer) learnStored(ctx context.Context, seg *segment) error {
	stored, err := s.storedTailLength(ctx, seg.tli, seg.segno)
	s.noteStorage(metrics.KindPartial, err)
	if err != nil {
		return err
	}
	s.tail.setStored(seg, stored, true)
	return nil
}

// uploadTailNow stores seg's first n bytes, those not stored yet as one part, and waits
// for it (no part may be in flight): the end of a segment whose timeline ended inside it.
func (s *Streamer) uploadTailNow(ctx context.Context, seg *segment, n uint64) error {
	stored, known := s.tail.storedLen(seg)
	if !known {
		if err := s.learnStored(ctx, seg); err != nil {
			return err
		}
		stored, _ = s.tail.storedLen(seg)
	}
	if n <= stored {
		return nil
	}
	if err := s.putPart(ctx, seg, stored, n); err != nil {
		return err
	}
	s.tail.setStored(seg, n, true)
	s.advance(walarchive.SegmentStartLSN(seg.segno, s.segSize)+walarchive.LSN(n), seg.gen)
	return nil
}

// issuePart starts storing bytes [from, to) of seg as a part, in the background. When it
// and every part issued before it have landed, the stored run and the acknowledged
// position move on.
func (s *Streamer) issuePart(ctx context.Context, seg *segment, from, to uint64) {
	fl := s.parts.issue(seg, from, to)
	go func() {
		err := s.putPart(ctx, seg, from, to)
		for _, done := range s.parts.land(fl, err) {
			s.tail.setStored(done.seg, done.end, true)
			s.advance(walarchive.SegmentStartLSN(done.seg.segno, s.segSize)+walarchive.LSN(done.end), done.seg.gen)
		}
		s.poke()
	}()
}

// putPart stores bytes [from, to) of seg, read from its spool file, as a tail part.
func (s *Streamer) putPart(ctx context.Context, seg *segment, from, to uint64) error {
	f, err := os.Open(seg.path)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	res, err := s.archive.PutPart(ctx, seg.tli, seg.segno, from, to, io.NewSectionReader(f, int64(from), int64(to-from)))
	s.noteStorage(metrics.KindPartial, err)
	if err != nil {
		return err
	}
	s.m.UploadSeconds.WithLabelValues(metrics.KindPartial).Observe(time.Since(start).Seconds())
	s.countUpload(metrics.KindPartial, res)
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
