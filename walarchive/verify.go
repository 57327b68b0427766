package walarchive

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
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
}

// Verify reads every object in the archive and checks its checksum, checks every backup's
// objects against its record, and checks that WAL is continuous on every timeline's path
// from the oldest backup to the archive's end.
func (a *Archive) Verify(ctx context.Context, progress func(key string)) (VerifyReport, error) {
	var r VerifyReport
	objs, err := a.Storage.List(ctx, "")
	if err != nil {
		return r, fmt.Errorf("list archive: %w", err)
	}
	// Step 1: every object decodes and matches its own checksum.
	for _, o := range objs {
		if progress != nil {
			progress(o.Key)
		}
		k := a.Key
		if o.Key == IdentityKey {
			k = nil // the identity says whether the archive is encrypted, so it never is
		}
		n, err := GetObject(ctx, a.Storage, o.Key, io.Discard, k)
		r.Objects++
		r.Bytes += uint64(n)
		if err != nil {
			r.Problems = append(r.Problems, Problem{o.Key, err.Error()})
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
	// Step 3: WAL continuity per timeline from the oldest backup on its path.
	tlis, err := a.Timelines(ctx)
	if err != nil {
		return r, err
	}
	sort.Slice(backups, func(i, j int) bool { return backups[i].StartLSN < backups[j].StartLSN })
	for _, tli := range tlis {
		p, err := a.Path(ctx, tli)
		if err != nil {
			r.Problems = append(r.Problems, Problem{HistoryKey(tli), err.Error()})
			continue
		}
		for _, b := range backups {
			if !p.Contains(b.Timeline, b.StopLSN) {
				continue
			}
			end, err := a.WALReach(ctx, p, b.StartLSN.SegmentNo(a.SegmentSize()))
			if err != nil {
				return r, err
			}
			if end.Missing != "" {
				r.Problems = append(r.Problems, Problem{TimelineDir(tli), fmt.Sprintf("WAL gap on timeline %d's path: %s is missing but later WAL exists", tli, end.Missing)})
			}
			break
		}
	}
	return r, nil
}
