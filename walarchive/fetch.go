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
// .partial, or a .history file) to w, verified. A segment stored only as a partial is
// served from the partial, padded with zeros to the segment size: PostgreSQL requires
// full-size segment files and replays up to the end of valid WAL.
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
		n, err := a.Get(ctx, PartialKey(f.Timeline, f.SegNo, a.SegmentSize()), w)
		if err != nil {
			return 0, notFoundAs(name, err)
		}
		return FetchedPartial, pad(w, a.SegmentSize()-uint64(n))
	}
	// A complete segment. Probe the key first: a partially written w cannot be rewound, so
	// the fallback to the partial is decided before any byte is written.
	key := SegmentKey(f.Timeline, f.SegNo, a.SegmentSize())
	_, err = a.Storage.Stat(ctx, key)
	if err == nil {
		n, err := a.Get(ctx, key, w)
		if err != nil {
			return 0, err
		}
		if uint64(n) != a.SegmentSize() {
			return 0, fmt.Errorf("%s: %w: %d bytes, expected the segment size %d", key, ErrCorrupt, n, a.SegmentSize())
		}
		return FetchedComplete, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return 0, err
	}
	pkey := PartialKey(f.Timeline, f.SegNo, a.SegmentSize())
	n, err := a.Get(ctx, pkey, w)
	if errors.Is(err, storage.ErrNotFound) {
		// The segment may have been completed (and its partial deleted) between the two
		// lookups: look for it once more before answering "not found".
		if _, serr := a.Storage.Stat(ctx, key); serr == nil {
			n, err := a.Get(ctx, key, w)
			if err != nil {
				return 0, err
			}
			if uint64(n) != a.SegmentSize() {
				return 0, fmt.Errorf("%s: %w: %d bytes, expected the segment size %d", key, ErrCorrupt, n, a.SegmentSize())
			}
			return FetchedComplete, nil
		} else if !errors.Is(serr, storage.ErrNotFound) {
			return 0, serr
		}
	}
	if err != nil {
		return 0, notFoundAs(name, err)
	}
	if uint64(n) > a.SegmentSize() {
		return 0, fmt.Errorf("%s: %w: %d bytes is more than a segment", pkey, ErrCorrupt, n)
	}
	return FetchedPartial, pad(w, a.SegmentSize()-uint64(n))
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
