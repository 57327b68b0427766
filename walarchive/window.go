package walarchive

import (
	"context"
	"fmt"
	"time"
)

// Window is the range of times a restore can reach on one timeline's path.
type Window struct {
	Timeline uint32
	// Earliest is the stop time of the oldest usable backup on the path.
	Earliest time.Time
	// Latest is when the newest WAL on the path was stored.
	Latest time.Time
	// End is how far the WAL reaches.
	End WALEnd
}

// Summary is what `kcbackup list` and the API report.
type Summary struct {
	Backups   []BackupRecord
	Problems  []error
	Timelines []uint32
	// Window is nil when no backup is usable yet.
	Window *Window
}

// Summarize lists the backups and timelines and computes the recovery window of the
// newest timeline.
func (a *Archive) Summarize(ctx context.Context) (Summary, error) {
	var s Summary
	var err error
	if s.Backups, s.Problems, err = a.Backups(ctx); err != nil {
		return s, err
	}
	if s.Timelines, err = a.Timelines(ctx); err != nil {
		return s, err
	}
	if len(s.Timelines) == 0 || len(s.Backups) == 0 {
		return s, nil
	}
	w, err := a.WindowOf(ctx, s.Timelines[len(s.Timelines)-1], s.Backups)
	if err != nil {
		s.Problems = append(s.Problems, err)
		return s, nil
	}
	s.Window = w
	return s, nil
}

// WindowOf computes the recovery window along the path to timeline tli.
func (a *Archive) WindowOf(ctx context.Context, tli uint32, backups []BackupRecord) (*Window, error) {
	p, err := a.Path(ctx, tli)
	if err != nil {
		return nil, err
	}
	for _, b := range backups { // oldest first
		if !p.Contains(b.Timeline, b.StopLSN) {
			continue
		}
		end, err := a.WALReach(ctx, p, b.StartLSN.SegmentNo(a.SegmentSize()))
		if err != nil {
			return nil, err
		}
		if !reaches(end, b.StopLSN, a.SegmentSize()) {
			continue
		}
		return &Window{Timeline: tli, Earliest: b.StopTime, Latest: end.LastModified, End: end}, nil
	}
	return nil, fmt.Errorf("no backup on timeline %d's path has its WAL in the archive", tli)
}

// reaches reports whether WAL that ends as e covers lsn (a partial last segment counts:
// its exact length is checked when it is fetched).
func reaches(e WALEnd, lsn LSN, segSize uint64) bool {
	if e.End >= lsn {
		return true
	}
	return e.Partial && e.LastSegment == lsn.SegmentNo(segSize)
}
