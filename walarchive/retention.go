package walarchive

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Retention says which backups to keep. A backup is kept when it is among the newest
// KeepBackups or stopped within KeepWithin of now. WAL is kept from the start of the
// oldest kept backup on; history files are always kept.
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

// PrunePlan is what Prune removes.
type PrunePlan struct {
	RemoveBackups []BackupRecord
	Keep          []BackupRecord
	// RemoveWAL are WAL keys (segments and partials) older than every kept backup.
	RemoveWAL []string
}

// PlanPrune decides what retention removes. It never removes the newest backup, nor any
// WAL that a kept backup needs (everything from the oldest kept backup's start segment on,
// on every timeline).
func (a *Archive) PlanPrune(ctx context.Context, r Retention, now time.Time) (PrunePlan, error) {
	if err := r.Validate(); err != nil {
		return PrunePlan{}, err
	}
	backups, problems, err := a.Backups(ctx)
	if err != nil {
		return PrunePlan{}, err
	}
	if len(problems) > 0 {
		return PrunePlan{}, fmt.Errorf("refusing to prune while a backup record fails verification (run kcbackup verify): %w", errors.Join(problems...))
	}
	var plan PrunePlan
	if len(backups) == 0 {
		return plan, nil
	}
	sort.Slice(backups, func(i, j int) bool { return backups[i].StopTime.After(backups[j].StopTime) }) // newest first
	for i, b := range backups {
		keep := i == 0 || (r.KeepBackups > 0 && i < r.KeepBackups) || (r.KeepWithin > 0 && now.Sub(b.StopTime) <= r.KeepWithin)
		if keep {
			plan.Keep = append(plan.Keep, b)
		} else {
			plan.RemoveBackups = append(plan.RemoveBackups, b)
		}
	}
	minSeg := plan.Keep[0].StartLSN.SegmentNo(a.SegmentSize())
	for _, b := range plan.Keep {
		if s := b.StartLSN.SegmentNo(a.SegmentSize()); s < minSeg {
			minSeg = s
		}
	}
	objs, err := a.Storage.List(ctx, walPrefix)
	if err != nil {
		return PrunePlan{}, fmt.Errorf("list WAL: %w", err)
	}
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, a.SegmentSize())
		if err != nil || f.Kind == WALFileHistory {
			continue
		}
		if f.SegNo < minSeg {
			plan.RemoveWAL = append(plan.RemoveWAL, o.Key)
		}
	}
	return plan, nil
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
