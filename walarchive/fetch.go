package walarchive

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// ErrWALNotInArchive means the archive truly has no such WAL file: restore_command answers
// "not found" only for this error, never for a storage failure.
var ErrWALNotInArchive = errors.New("not in the archive")

// FetchSource says where a fetched WAL file came from.
type FetchSource int

// Where a fetched WAL file came from.
const (
	FetchedComplete FetchSource = iota + 1
	FetchedPartial
	FetchedHistory
)

// FetchWALFile writes the WAL file that restore_command was asked for (a segment, a
// .partial, or a .history file) to w, verified. A segment stored only as its tail (parts,
// or a format-2 partial) is served from the tail's run from the segment's first byte,
// padded with zeros to the segment size: PostgreSQL requires full-size segment files and
// replays up to the end of valid WAL.
//
// It returns an error wrapping ErrWALNotInArchive only when neither object exists; any other
// error is a storage or verification failure. Bytes reach w before verification ends.
func (a *Archive) FetchWALFile(ctx context.Context, name string, w io.Writer) (FetchSource, error) {
	f, err := ParseWALFileName(name, a.SegmentSize())
	if err != nil {
		return 0, err
	}
	switch f.Kind {
	case WALFileHistory:
		if _, err := a.Get(ctx, HistoryKey(f.Timeline), w); err != nil {
			return 0, notFoundAs(name, err)
		}
		return FetchedHistory, nil
	case WALFileBackupLabel:
		// kcbackup keeps backup records itself; recovery does not need these files.
		return 0, fmt.Errorf("%s: %w", name, ErrWALNotInArchive)
	case WALFilePartial:
		return a.fetchTail(ctx, name, f, w, false)
	}
	// A complete segment: read it at once (one round trip, not a lookup and a read). A
	// missing object is reported before any byte reaches w, so the fallback to the tail is
	// still decided before w is written.
	key := SegmentKey(f.Timeline, f.SegNo, a.SegmentSize())
	err = a.getSegment(ctx, key, w)
	if err == nil {
		return FetchedComplete, nil
	}
	if !errors.Is(err, errNothingWritten) {
		return 0, err
	}
	return a.fetchTail(ctx, name, f, w, true)
}

// fetchTail writes the stored tail of f's segment (its run of parts from the first byte),
// padded with zeros to the segment size. With orComplete, a complete segment stored since
// the first lookup (the parts are then being removed) is served instead.
func (a *Archive) fetchTail(ctx context.Context, name string, f WALFile, w io.Writer, orComplete bool) (FetchSource, error) {
	key := SegmentKey(f.Timeline, f.SegNo, a.SegmentSize())
	for attempt := 0; ; attempt++ {
		t, err := a.ListTail(ctx, f.Timeline, f.SegNo)
		if err != nil {
			return 0, err
		}
		if orComplete && t.Complete {
			switch err := a.getSegment(ctx, key, w); {
			case err == nil:
				return FetchedComplete, nil
			case !errors.Is(err, errNothingWritten):
				return 0, err
			}
		}
		if t.Empty() {
			return 0, fmt.Errorf("%s: %w", name, ErrWALNotInArchive)
		}
		cw := &countingWriter{w: w}
		n, err := a.ReadTail(ctx, t, cw)
		if errors.Is(err, storage.ErrNotFound) && cw.n == 0 && attempt == 0 {
			continue // completed between the listing and the read: list once more
		}
		if err != nil {
			return 0, notFoundAs(name, err)
		}
		if n == 0 {
			return 0, fmt.Errorf("%s: %w", name, ErrWALNotInArchive)
		}
		return FetchedPartial, pad(w, a.SegmentSize()-n)
	}
}

// FetchCompleteSegment writes complete segment segno of timeline tli to w, verified, and
// never its partial: an error wrapping ErrWALNotInArchive when the archive holds no complete
// segment under that name (a prefetcher must not keep a tail that may still grow).
func (a *Archive) FetchCompleteSegment(ctx context.Context, tli uint32, segno uint64, w io.Writer) error {
	err := a.getSegment(ctx, SegmentKey(tli, segno, a.SegmentSize()), w)
	if errors.Is(err, errNothingWritten) {
		return fmt.Errorf("%s: %w", SegmentName(tli, segno, a.SegmentSize()), ErrWALNotInArchive)
	}
	return err
}

// errNothingWritten wraps storage.ErrNotFound when the object is missing and no byte has
// reached the writer, so the caller may still write something else to it.
var errNothingWritten = errors.New("no such object, nothing written")

// getSegment copies the complete segment at key to w, verified and checked for the
// segment's size.
func (a *Archive) getSegment(ctx context.Context, key string, w io.Writer) error {
	cw := &countingWriter{w: w}
	n, err := a.Get(ctx, key, cw)
	if err != nil {
		if cw.n == 0 && errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%s: %w: %w", key, errNothingWritten, err)
		}
		return err
	}
	if uint64(n) != a.SegmentSize() {
		return fmt.Errorf("%s: %w: %d bytes, expected the segment size %d", key, ErrCorrupt, n, a.SegmentSize())
	}
	return nil
}

func notFoundAs(name string, err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%s: %w", name, ErrWALNotInArchive)
	}
	return err
}

var zeros = make([]byte, 64<<10)

func pad(w io.Writer, n uint64) error {
	for n > 0 {
		k := uint64(len(zeros))
		if n < k {
			k = n
		}
		if _, err := w.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
