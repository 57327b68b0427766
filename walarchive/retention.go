package walarchive

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"
)

// Retention says which backups to keep: the newest KeepBackups, and those that stopped
// within KeepWithin of now. Whatever the policy, per timeline path it keeps what restores
// into each kept range: the newest backup on the live timeline's path always, and with
// KeepWithin the youngest backup that stopped before the window on each path (a restore to
// the window's start needs it). WAL is kept from each kept backup's start on, along every
// timeline that descends from it; history files are always kept.
type Retention struct {
	KeepBackups int
	KeepWithin  time.Duration
}

// Validate checks that the policy keeps something.
func (r Retention) Validate() error {
	if r.KeepBackups < 0 || r.KeepWithin < 0 {
		return errors.New("invalid retention: --keep-backups and --keep-within must not be negative")
	}
	if r.KeepBackups == 0 && r.KeepWithin == 0 {
		return errors.New("invalid retention: give --keep-backups N (at least 1) or --keep-within DURATION")
	}
	return nil
}

// KeptBackup is a backup retention keeps, with why.
type KeptBackup struct {
	BackupRecord
	Reasons []string
}

// PrunePlan is what Prune removes, and why the rest stays.
type PrunePlan struct {
	RemoveBackups []BackupRecord
	Keep          []KeptBackup
	// RemoveWAL are WAL keys (segments and partials) that no kept backup restores through.
	RemoveWAL []string
	// KeepWALFrom says, per timeline, the first segment kept.
	KeepWALFrom map[uint32]uint64
}

// PlanPrune decides what retention removes. It never removes the newest backup on the live
// timeline's path, nor any WAL that a kept backup restores through on any timeline.
func (a *Archive) PlanPrune(ctx context.Context, r Retention, now time.Time) (PrunePlan, error) {
	if err := r.Validate(); err != nil {
		return PrunePlan{}, err
	}
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return PrunePlan{}, err
	}
	if len(g.Problems) > 0 {
		return PrunePlan{}, fmt.Errorf("refusing to prune while a backup record fails verification (run kcbackup verify): %w", errors.Join(g.Problems...))
	}
	plan := PrunePlan{KeepWALFrom: map[uint32]uint64{}}
	if len(g.Backups) == 0 {
		return plan, nil
	}
	paths := map[uint32]WALPath{}
	for _, tli := range g.Timelines {
		p, err := g.Path(tli)
		if err != nil {
			return PrunePlan{}, fmt.Errorf("refusing to prune: %w", err)
		}
		paths[tli] = p
	}
	reasons := keepReasons(g, paths, r, now)
	for _, b := range g.Backups {
		if why := reasons[b.ID]; len(why) > 0 {
			plan.Keep = append(plan.Keep, KeptBackup{BackupRecord: b, Reasons: why})
		} else {
			plan.RemoveBackups = append(plan.RemoveBackups, b)
		}
	}
	// WAL: a segment of timeline t is kept when some timeline's path reads it from t and
	// holds a kept backup that starts at or before it.
	keepFrom := map[uint32]uint64{} // per timeline of the file: the lowest segment kept
	for _, tli := range g.Timelines {
		p := paths[tli]
		for _, kb := range plan.Keep {
			if !p.Contains(kb.Timeline, kb.StopLSN) {
				continue
			}
			startSeg := kb.StartLSN.SegmentNo(a.SegmentSize())
			for _, t := range pathTimelines(p) {
				if cur, ok := keepFrom[t]; !ok || startSeg < cur {
					keepFrom[t] = startSeg
				}
			}
		}
	}
	plan.KeepWALFrom = keepFrom
	objs, err := a.Storage.List(ctx, walPrefix)
	if err != nil {
		return PrunePlan{}, fmt.Errorf("list WAL: %w", err)
	}
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, a.SegmentSize())
		if err != nil || f.Kind == WALFileHistory {
			continue
		}
		if from, ok := keepFrom[f.Timeline]; ok && f.SegNo >= from {
			continue
		}
		plan.RemoveWAL = append(plan.RemoveWAL, o.Key)
	}
	return plan, nil
}

// keepReasons says, per backup ID, why retention keeps it (nil: it goes).
func keepReasons(g *Graph, paths map[uint32]WALPath, r Retention, now time.Time) map[string][]string {
	reasons := map[string][]string{}
	add := func(id, why string) { reasons[id] = append(reasons[id], why) }
	byStop := append([]BackupRecord(nil), g.Backups...)
	sort.SliceStable(byStop, func(i, j int) bool { return byStop[i].StopTime.After(byStop[j].StopTime) }) // newest first
	if live, ok := g.Live(); ok {
		for _, b := range byStop {
			if paths[live].Contains(b.Timeline, b.StopLSN) {
				add(b.ID, fmt.Sprintf("the newest backup on the live timeline %d's path", live))
				break
			}
		}
	}
	for i, b := range byStop {
		if r.KeepBackups > 0 && i < r.KeepBackups {
			add(b.ID, fmt.Sprintf("among the %d newest backups", r.KeepBackups))
		}
		if r.KeepWithin > 0 && now.Sub(b.StopTime) <= r.KeepWithin {
			add(b.ID, fmt.Sprintf("stopped within %s", r.KeepWithin))
		}
	}
	if r.KeepWithin > 0 {
		start := now.Add(-r.KeepWithin)
		for _, tli := range g.Timelines {
			for _, b := range byStop {
				if b.StopTime.Before(start) && paths[tli].Contains(b.Timeline, b.StopLSN) {
					add(b.ID, fmt.Sprintf("the youngest backup before the %s window on timeline %d's path", r.KeepWithin, tli))
					break
				}
			}
		}
	}
	for id, why := range reasons {
		reasons[id] = dedupe(why)
	}
	return reasons
}

func dedupe(s []string) []string {
	var out []string
	for _, x := range s {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// pathTimelines lists the timelines whose WAL files a path reads.
func pathTimelines(p WALPath) []uint32 {
	out := []uint32{p.Target}
	for _, s := range p.History {
		out = append(out, s.Parent)
	}
	return out
}

// Prune carries out a plan: each backup's record first (so it stops being a backup), then
// its objects, then the WAL.
func (a *Archive) Prune(ctx context.Context, plan PrunePlan) error {
	for _, b := range plan.RemoveBackups {
		if err := a.Storage.Delete(ctx, BackupRecordKey(b.ID)); err != nil {
			return fmt.Errorf("remove backup %s: %w", b.ID, err)
		}
		objs, err := a.Storage.List(ctx, BackupPrefix(b.ID))
		if err != nil {
			return fmt.Errorf("remove backup %s: %w", b.ID, err)
		}
		for _, o := range objs {
			if err := a.Storage.Delete(ctx, o.Key); err != nil {
				return fmt.Errorf("remove backup %s: %w", b.ID, err)
			}
		}
	}
	for _, k := range plan.RemoveWAL {
		if err := a.Storage.Delete(ctx, k); err != nil {
			return fmt.Errorf("remove WAL %s: %w", k, err)
		}
	}
	return nil
}
