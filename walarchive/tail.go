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

// The live tail of a segment is stored as appended parts (format 3): each upload stores
// only the bytes not stored before, as its own immutable, checksummed object
// wal/<TLI>/<segment>.parts/<start>-<end>. The tail a reader may use is the run of parts
// that continues from the segment's first byte: from offset 0, a part that starts at or
// before the run's end and ends past it moves the end on. Parts may overlap (an upload
// retried after more WAL arrived) and a run may be followed by parts past a gap (a writer
// that had several parts in flight when it crashed): bytes past the first gap are never
// read, and overlapping bytes are the same WAL, read from the part that reaches further.
// A format-2 tail, one object <segment>.partial, is a part from 0 whose end is its length.
//
// When the segment is complete, its complete object is stored and the parts are removed;
// readers prefer the complete segment.

// TailPart is one stored piece of a segment's tail.
type TailPart struct {
	Key        string
	Start, End uint64
	// ModTime is when the part was stored (from the listing).
	ModTime time.Time
	// Legacy is a format-2 <segment>.partial object: its End is known only once read.
	Legacy bool
}

// Tail is what is stored of one segment's tail.
type Tail struct {
	Timeline uint32
	SegNo    uint64
	// Complete is set when the complete segment was listed too (ListTail).
	Complete bool
	// Parts are sorted by start, then end.
	Parts []TailPart
}

// Empty reports whether nothing of the tail is stored.
func (t Tail) Empty() bool { return len(t.Parts) == 0 }

// Run returns the parts that make up the tail continuing from the segment's first byte, in
// order, and where that run ends. A legacy object's end must be known (see ListTail).
func (t Tail) Run() (run []TailPart, end uint64) {
	for {
		best := -1
		for i, p := range t.Parts {
			if p.Start <= end && p.End > end && (best < 0 || p.End > t.Parts[best].End) {
				best = i
			}
		}
		if best < 0 {
			return run, end
		}
		run = append(run, t.Parts[best])
		end = t.Parts[best].End
	}
}

// tailFromListing gathers the parts of each segment from a listing of WAL keys.
func tailsFromListing(objs []storage.ObjectInfo, segSize uint64) map[walPos]*Tail {
	out := map[walPos]*Tail{}
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, segSize)
		if err != nil || f.Kind != WALFilePart && f.Kind != WALFilePartial {
			continue
		}
		k := walPos{f.Timeline, f.SegNo}
		t := out[k]
		if t == nil {
			t = &Tail{Timeline: f.Timeline, SegNo: f.SegNo}
			out[k] = t
		}
		p := TailPart{Key: o.Key, Start: f.PartStart, End: f.PartEnd, ModTime: o.ModTime}
		if f.Kind == WALFilePartial {
			p = TailPart{Key: o.Key, Legacy: true, ModTime: o.ModTime}
		}
		t.Parts = append(t.Parts, p)
	}
	for _, t := range out {
		sortParts(t.Parts)
	}
	return out
}

func sortParts(ps []TailPart) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Start != ps[j].Start {
			return ps[i].Start < ps[j].Start
		}
		return ps[i].End < ps[j].End
	})
}

// ListTail lists what is stored of segment segno on timeline tli, in one listing: whether
// its complete segment is stored, its tail parts and, in an archive written by format 2,
// its single partial object, whose length is read so that the tail's run is known.
func (a *Archive) ListTail(ctx context.Context, tli uint32, segno uint64) (Tail, error) {
	seg := a.SegmentSize()
	key := SegmentKey(tli, segno, seg)
	objs, err := a.Storage.List(ctx, key)
	if err != nil {
		return Tail{}, fmt.Errorf("list %s and its tail: %w", key, err)
	}
	t := Tail{Timeline: tli, SegNo: segno}
	if p := tailsFromListing(objs, seg)[walPos{tli, segno}]; p != nil {
		t = *p
	}
	parts := t.Parts[:0]
	for _, p := range t.Parts {
		if !p.Legacy {
			parts = append(parts, p)
			continue
		}
		n, err := a.Get(ctx, p.Key, io.Discard)
		switch {
		case errors.Is(err, storage.ErrNotFound): // superseded by its complete segment
		case err != nil:
			return Tail{}, fmt.Errorf("read %s: %w", p.Key, err)
		case uint64(n) > seg:
			return Tail{}, fmt.Errorf("%s: %w: %d bytes is more than a segment", p.Key, ErrCorrupt, n)
		case n > 0:
			parts = append(parts, TailPart{Key: p.Key, Start: 0, End: uint64(n), Legacy: true, ModTime: p.ModTime})
		}
	}
	t.Parts = parts
	sortParts(t.Parts)
	for _, o := range objs {
		if o.Key == key {
			t.Complete = true
		}
	}
	return t, nil
}

// ReadTail writes the tail's run (see Tail.Run) to w, each part verified and checked to
// hold exactly its range, and returns how many bytes it wrote. A part deleted while it is
// read (its complete segment was stored) is reported as storage.ErrNotFound.
func (a *Archive) ReadTail(ctx context.Context, t Tail, w io.Writer) (uint64, error) {
	run, _ := t.Run()
	var at uint64
	for _, p := range run {
		skip := at - p.Start // bytes of this part already written from the one before
		pw := &rangeWriter{w: w, skip: skip}
		n, err := a.Get(ctx, p.Key, pw)
		if err != nil {
			return at + pw.wrote, err
		}
		if uint64(n) != p.End-p.Start {
			return at + pw.wrote, fmt.Errorf("%s: %w: %d bytes, expected %d from its name", p.Key, ErrCorrupt, n, p.End-p.Start)
		}
		at = p.End
	}
	return at, nil
}

// rangeWriter passes on what it is given after its first skip bytes.
type rangeWriter struct {
	w     io.Writer
	skip  uint64
	wrote uint64
}

func (r *rangeWriter) Write(p []byte) (int, error) {
	n := len(p)
	if r.skip > 0 {
		k := min(uint64(len(p)), r.skip)
		r.skip -= k
		p = p[k:]
	}
	if len(p) > 0 {
		k, err := r.w.Write(p)
		r.wrote += uint64(k)
		if err != nil {
			return n - len(p) + k, err
		}
	}
	return n, nil
}

// PutPart stores bytes [start, end) of segment segno's tail, read from r, as an immutable
// part. A part already stored with the same bytes is success.
func (a *Archive) PutPart(ctx context.Context, tli uint32, segno, start, end uint64, r io.ReadSeeker) (PutResult, error) {
	if start >= end || end > a.SegmentSize() {
		return PutResult{}, fmt.Errorf("tail part [%d, %d) of %s: expected start < end <= %d", start, end, SegmentName(tli, segno, a.SegmentSize()), a.SegmentSize())
	}
	return a.PutImmutable(ctx, PartKey(tli, segno, a.SegmentSize(), start, end), r)
}

// DeleteTail removes every part of a segment's tail and its format-2 partial (its complete
// segment is stored).
func (a *Archive) DeleteTail(ctx context.Context, tli uint32, segno uint64) error {
	seg := a.SegmentSize()
	objs, err := a.Storage.List(ctx, PartsDir(tli, segno, seg))
	if err != nil {
		return fmt.Errorf("list the tail of %s: %w", SegmentName(tli, segno, seg), err)
	}
	for _, o := range objs {
		if err := a.Storage.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return a.Storage.Delete(ctx, PartialKey(tli, segno, seg))
}
