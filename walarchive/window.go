package walarchive

import (
	"context"
	"fmt"
	"time"
)

// Window is one restorable range of a timeline's path, as `list`, the API, the metrics and
// the operator report it.
type Window struct {
	Timeline uint32
	// Earliest is the stop time of the oldest backup that restores into the range.
	Earliest time.Time
	// Latest is the last time the range reaches (see Range.To).
	Latest time.Time
	// End is how far the range's WAL reaches.
	End WALEnd
	// Hole is set when the range ends at missing WAL that later WAL follows.
	Hole bool
}

// Contains reports whether t lies in the window.
func (w Window) Contains(t time.Time) bool { return !t.Before(w.Earliest) && !t.After(w.Latest) }

func windowOf(r Range) Window {
	return Window{Timeline: r.Timeline, Earliest: r.From, Latest: r.To, End: r.End, Hole: r.Hole}
}

// Summary is what `kcbackup list` and the API report.
type Summary struct {
	Backups   []BackupRecord
	Problems  []error
	Timelines []uint32
	// LiveTimeline is the newest timeline (0 when the archive has no WAL).
	LiveTimeline uint32
	// Windows are the restorable ranges of every timeline's path, by timeline, oldest first.
	// A hole in the WAL shows as two ranges.
	Windows map[uint32][]Window
	// Window is the newest range of the live timeline: where a restore to a recent time
	// lands. Nil when no backup is usable yet.
	Window *Window
}

// Summarize lists the backups and timelines and computes the restorable ranges of every
// timeline's path.
func (a *Archive) Summarize(ctx context.Context) (Summary, error) {
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return Summary{}, err
	}
	s := Summary{Backups: g.Backups, Problems: g.Problems, Timelines: g.Timelines, Windows: map[uint32][]Window{}}
	live, ok := g.Live()
	if !ok || len(g.Backups) == 0 {
		return s, nil
	}
	s.LiveTimeline = live
	for _, tli := range g.Timelines {
		rs, err := a.Ranges(ctx, g, tli)
		if err != nil {
			s.Problems = append(s.Problems, fmt.Errorf("recovery window of timeline %d: %w", tli, err))
			continue
		}
		for _, r := range rs {
			s.Windows[tli] = append(s.Windows[tli], windowOf(r))
		}
	}
	if ws := s.Windows[live]; len(ws) > 0 {
		w := ws[len(ws)-1]
		s.Window = &w
	} else {
		s.Problems = append(s.Problems, fmt.Errorf("no backup on timeline %d's path has its WAL in the archive", live))
	}
	return s, nil
}

// reaches reports whether WAL that ends as e covers lsn (a partial last segment counts:
// its exact length is checked when it is fetched).
func reaches(e WALEnd, lsn LSN, segSize uint64) bool {
	if e.End >= lsn {
		return true
	}
	return e.Partial && e.LastSegment == lsn.SegmentNo(segSize)
}
