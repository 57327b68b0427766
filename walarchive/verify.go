package walarchive

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Problem is one finding of Verify, naming the object or range concerned.
type Problem struct {
	Object string
	Detail string
}

func (p Problem) String() string { return p.Object + ": " + p.Detail }

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Objects  int
	Bytes    uint64
	Backups  int
	Problems []Problem
	// Warnings are findings that do not make the archive unusable, such as a hole in the
	// WAL that splits a timeline's recovery window into two ranges (after a replication slot
	// was invalidated): `list` shows the ranges.
	Warnings []Problem
}

// Verify reads every object in the archive and checks its checksum, checks every backup's
// objects against its record and its WAL, and reports holes in the WAL of every timeline's
// path. It may run while the archive is written: an object that disappears between the
// listing and the read because it was superseded (a tail replaced by its complete
// segment) is not a problem.
func (a *Archive) Verify(ctx context.Context, progress func(key string)) (VerifyReport, error) {
	var r VerifyReport
	objs, err := a.Storage.List(ctx, "")
	if err != nil {
		return r, fmt.Errorf("list archive: %w", err)
	}
	// Step 1: every object decodes and matches its own checksum.
	for _, o := range objs {
		if strings.HasPrefix(o.Key, probePrefix) {
			continue // a writer's scratch object (ProbeConditionalWrites), deleted at once
		}
		if progress != nil {
			progress(o.Key)
		}
		k := a.Key
		if isPlainKey(o.Key) {
			k = nil // the identity and the writer log are never encrypted
		}
		n, err := GetObject(ctx, a.Storage, o.Key, io.Discard, k)
		if errors.Is(err, storage.ErrNotFound) && a.superseded(ctx, o.Key) {
			continue
		}
		r.Objects++
		r.Bytes += uint64(n)
		if err != nil {
			r.Problems = append(r.Problems, Problem{o.Key, err.Error()})
		} else if f, perr := ParseWALKey(o.Key, a.SegmentSize()); perr == nil && f.Kind == WALFilePart && uint64(n) != f.PartEnd-f.PartStart {
			r.Problems = append(r.Problems, Problem{o.Key, fmt.Sprintf("tail part holds %d bytes, but its name says %d", n, f.PartEnd-f.PartStart)})
		}
	}
	// Step 2: backups match their records.
	backups, problems, err := a.Backups(ctx)
	if err != nil {
		return r, err
	}
	for _, p := range problems {
		r.Problems = append(r.Problems, Problem{"backups/", p.Error()})
	}
	for _, b := range backups {
		r.Backups++
		for _, obj := range b.Objects {
			key := BackupPrefix(b.ID) + obj.Name
			h := newSumWriter()
			n, err := a.Get(ctx, key, h)
			if err != nil {
				r.Problems = append(r.Problems, Problem{key, err.Error()})
				continue
			}
			if uint64(n) != obj.RawBytes || hex.EncodeToString(h.sum()) != obj.SHA256 {
				r.Problems = append(r.Problems, Problem{key, "content does not match backup " + b.ID + "'s record"})
			}
		}
		ok, missing, err := a.HasWAL(ctx, b.Timeline, b.StartLSN, b.StopLSN)
		if err != nil {
			return r, err
		}
		if !ok {
			r.Problems = append(r.Problems, Problem{"backup " + b.ID, "WAL from its start to its stop is incomplete: " + missing + " is missing"})
		}
	}
	// Step 3: holes in the WAL of each timeline's path split its window into ranges.
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return r, err
	}
	for _, tli := range g.Timelines {
		rs, err := g.Ranges(tli)
		if err != nil {
			r.Problems = append(r.Problems, Problem{HistoryKey(tli), err.Error()})
			continue
		}
		for _, rg := range rs {
			if rg.Hole {
				r.Warnings = append(r.Warnings, Problem{TimelineDir(tli), fmt.Sprintf("WAL hole on timeline %d's path: %s is missing but later WAL exists; restores before it reach only to its start (see kcbackup list)", tli, rg.End.Missing)})
			}
		}
	}
	return r, nil
}

// superseded reports whether key, found missing after it was listed, was replaced as the
// archive moved on: a partial or tail part whose complete segment now exists.
func (a *Archive) superseded(ctx context.Context, key string) bool {
	f, err := ParseWALKey(key, a.SegmentSize())
	if err != nil || f.Kind != WALFilePartial && f.Kind != WALFilePart {
		return false
	}
	_, err = a.Storage.Stat(ctx, SegmentKey(f.Timeline, f.SegNo, a.SegmentSize()))
	return err == nil
}
