package streamer

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/walarchive"
)

// uploader stores ended segments in order, and the tail of the current segment as a
// partial at most every PartialInterval, retrying storage errors with backoff. It runs
// until ctx ends.
func (s *Streamer) uploader(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-s.archiveSet:
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	tick := s.cfg.PartialInterval
	if tick <= 0 || tick > 250*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		job, err := s.nextJob(ctx)
		if err == nil && job == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			case <-ticker.C:
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
// partial is due. It returns nil when there is nothing to do.
func (s *Streamer) nextJob(ctx context.Context) (func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		seg := s.queue[0]
		return func() error { return s.uploadEnded(ctx, seg) }, nil
	}
	cur := s.cur
	if cur == nil || cur.written == 0 {
		return nil, nil
	}
	key := [2]uint64{uint64(cur.tli), cur.segno}
	if cur.written <= s.partialStored[key] {
		return nil, nil
	}
	if !s.draining && s.cfg.Now().Sub(s.lastPartialAt) < s.cfg.PartialInterval {
		return nil, nil
	}
	n := cur.written
	s.lastPartialAt = s.cfg.Now()
	return func() error { return s.uploadPartial(ctx, cur, n) }, nil
}

// uploadEnded stores a segment that receives no more bytes: under its final name when it
// is complete, as a partial when its timeline ended inside it.
func (s *Streamer) uploadEnded(ctx context.Context, seg *segment) error {
	if seg.written < s.segSize {
		if err := s.uploadPartial(ctx, seg, seg.written); err != nil {
			return err
		}
	} else {
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
		// The tail partial of this segment is superseded.
		s.mu.Lock()
		delete(s.partialStored, [2]uint64{uint64(seg.tli), seg.segno})
		s.mu.Unlock()
		if err := s.archive.Storage.Delete(ctx, walarchive.PartialKey(seg.tli, seg.segno, s.segSize)); err != nil {
			s.log.Warn("could not delete superseded partial", "segment", walarchive.SegmentName(seg.tli, seg.segno, s.segSize), "err", err)
		}
		s.advance(walarchive.SegmentStartLSN(seg.segno+1, s.segSize), seg.gen)
	}
	os.Remove(seg.path)
	s.mu.Lock()
	if len(s.queue) > 0 && s.queue[0] == seg {
		s.queue = s.queue[1:]
	}
	s.mu.Unlock()
	return nil
}

// uploadPartial stores the first n bytes of seg as its partial, unless a partial at least
// that long is already stored.
func (s *Streamer) uploadPartial(ctx context.Context, seg *segment, n uint64) error {
	key := [2]uint64{uint64(seg.tli), seg.segno}
	s.mu.Lock()
	stored, known := s.partialStored[key]
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
	s.advance(walarchive.SegmentStartLSN(seg.segno, s.segSize)+walarchive.LSN(n), seg.gen)
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
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return
	}
	if to > s.archived {
		s.archived = to
	}
	s.mu.Unlock()
	s.m.ArchivedLSN.Set(float64(to))
	select {
	case s.archivedSig <- struct{}{}:
	default:
	}
}
