package walarchive

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// HasWAL reports whether all WAL of timeline tli from start up to stop is in the archive,
// checked by exact keys: every complete segment, and for the last one either the complete
// segment or a stored tail (see Tail.Run) holding at least up to stop. It names the first missing piece.
func (a *Archive) HasWAL(ctx context.Context, tli uint32, start, stop LSN) (bool, string, error) {
	seg := a.SegmentSize()
	last := stop.SegmentNo(seg)
	if stop.SegmentOffset(seg) == 0 && stop > start {
		last-- // stop is the first byte of the next segment; nothing of it is needed
	}
	for n := start.SegmentNo(seg); n <= last; n++ {
		_, err := a.Storage.Stat(ctx, SegmentKey(tli, n, seg))
		if err == nil {
			continue
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return false, "", err
		}
		if n != last {
			return false, SegmentName(tli, n, seg), nil
		}
		// The last segment may be the live tail: a run of parts long enough will do.
		t, err := a.ListTail(ctx, tli, n)
		if err != nil {
			return false, "", err
		}
		if t.Complete {
			continue // completed since the lookup
		}
		_, got := t.Run()
		if got == 0 {
			return false, SegmentName(tli, n, seg), nil
		}
		if SegmentStartLSN(n, seg)+LSN(got) < stop {
			return false, fmt.Sprintf("%s (tail up to %s)", SegmentName(tli, n, seg), SegmentStartLSN(n, seg)+LSN(got)), nil
		}
	}
	return true, "", nil
}

// WaitForWAL polls the archive (from every 20 ms, backing off to 500 ms) until HasWAL
// holds or ctx ends. Segments found are not
// checked again, so a long range costs one lookup per segment plus the tail.
func (a *Archive) WaitForWAL(ctx context.Context, tli uint32, start, stop LSN) error {
	from := start
	wait := 20 * time.Millisecond // the last segment usually lands within moments
	for {
		ok, missing, err := a.HasWAL(ctx, tli, from, stop)
		if err == nil && ok {
			return nil
		}
		if err == nil && missing != "" {
			if _, segno, perr := ParseSegmentName(missing[:24], a.SegmentSize()); perr == nil {
				if s := SegmentStartLSN(segno, a.SegmentSize()); s > from {
					from = s
				}
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return err
			}
			return fmt.Errorf("%s is missing: %w", missing, ctx.Err())
		case <-time.After(wait):
		}
		if wait < 500*time.Millisecond {
			wait *= 2
		}
	}
}
