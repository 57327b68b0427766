package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// reconcileOnce takes the single base backup of a resource without schedule: start it,
// follow it, and end Completed or Failed.
func (r *Reconciler) reconcileOnce(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string) (ctrl.Result, error) {
	r.Metrics.unscheduled(kb.Namespace, kb.Name) // the schedule may have been removed
	kb.Status.NextScheduleTime = nil
	if paused, err := r.pausedForRestore(ctx, kb, w); err != nil || paused {
		return ctrl.Result{RequeueAfter: r.RetryInterval}, err
	}
	sc, ok, err := r.sidecarClient(ctx, kb, w, token)
	if err != nil || !ok {
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonWaiting, "waiting for a running pod of "+w.String())
		return ctrl.Result{RequeueAfter: r.PollInterval}, err
	}
	// Step 1: follow the running backup to its end.
	if kb.Status.CurrentBackupID != "" {
		_, done := r.followBackup(ctx, kb, sc)
		if !done {
			return ctrl.Result{RequeueAfter: r.PollInterval}, nil
		}
		if kb.Status.Phase == kcv1.PhaseBackingUp {
			kb.Status.Phase = kcv1.PhaseCompleted
		}
		return ctrl.Result{}, nil
	}
	// Step 2: start it, once.
	if _, ok := r.sidecarStatus(ctx, kb, sc); !ok {
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	if err := r.startBackup(ctx, kb, sc, "manual backup"); err != nil {
		return ctrl.Result{RequeueAfter: r.RetryInterval}, nil
	}
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// startBackup asks the sidecar for a base backup and records its ID. A backup already
// running (for another resource) is not this resource's: it waits for its turn.
func (r *Reconciler) startBackup(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client, why string) error {
	job, err := sc.StartBackup(ctx)
	if err != nil {
		reason := kcv1.ReasonSidecarUnreachable
		if errors.Is(err, apiclient.ErrBackupRunning) {
			reason = kcv1.ReasonWaiting
		}
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, "cannot start the "+why+": "+err.Error())
		return err
	}
	kb.Status.CurrentBackupID = job.ID
	kb.Status.Phase = kcv1.PhaseBackingUp
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonBackupRunning, "base backup "+job.ID+" is running")
	log.FromContext(ctx).Info("started base backup", "id", job.ID, "why", why)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "BackupStarted", "StartBackup", "started %s %s", why, job.ID)
	return nil
}

// followBackup checks the running backup. When it ended it records the result, clears
// CurrentBackupID and reports done; succeeded says how it ended.
func (r *Reconciler) followBackup(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client) (succeeded, done bool) {
	id := kb.Status.CurrentBackupID
	job, err := sc.Backup(ctx, id)
	switch {
	case errors.Is(err, apiclient.ErrNotFound):
		// The sidecar restarted and forgot it: it did not complete.
		r.backupEnded(kb, kcv1.ReasonBackupLost, "the sidecar no longer knows backup "+id+" (it restarted while the backup ran)")
		return false, true
	case err != nil:
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarUnreachable, err.Error())
		return false, false
	case job.State == apiclient.StateFailed:
		r.backupEnded(kb, kcv1.ReasonBackupFailed, "base backup "+id+" failed: "+job.Error)
		return false, true
	case job.State != apiclient.StateCompleted || job.Backup == nil:
		return false, false
	}
	b := job.Backup
	rec := kcv1.BackupRecord{
		ID: b.ID, StartTime: ptrTime(b.StartTime), StopTime: ptrTime(b.StopTime),
		StartLSN: b.StartLSN, StopLSN: b.StopLSN, Timeline: int64(b.Timeline), SizeBytes: b.SizeBytes,
		Size: humanBytes(b.SizeBytes),
	}
	kb.Status.Backup = rec.DeepCopy()
	kb.Status.OpensRange = nil
	if rec.StopTime != nil {
		kb.Status.OpensRange = &kcv1.OpenedRange{Timeline: rec.Timeline, Earliest: *rec.StopTime}
	}
	kb.Status.Backups = append(kb.Status.Backups, rec)
	if n := len(kb.Status.Backups); n > maxBackupsListed {
		kb.Status.Backups = kb.Status.Backups[n-maxBackupsListed:]
	}
	kb.Status.CurrentBackupID = ""
	kb.Status.LastBackupTime = ptrTime(b.StopTime)
	kb.Status.LastFailedBackupTime = nil
	r.Metrics.backupSucceeded(kb.Namespace, kb.Name, float64(b.StopTime.Unix()))
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonBackupCompleted,
		fmt.Sprintf("base backup %s completed: %s to %s, %d bytes stored", b.ID, b.StartLSN, b.StopLSN, b.SizeBytes))
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "BackupCompleted", "FollowBackup",
		"base backup %s completed (%s to %s, %d bytes stored)", b.ID, b.StartLSN, b.StopLSN, b.SizeBytes)
	if _, err := r.refreshWindow(ctx, kb, sc); err != nil {
		log.FromContext(ctx).Info("cannot read the catalog after a backup", "error", err.Error())
	}
	return true, true
}

// backupEnded records a failed backup attempt.
func (r *Reconciler) backupEnded(kb *kcv1.KeycloakBackup, reason, msg string) {
	kb.Status.CurrentBackupID = ""
	kb.Status.LastFailedBackupTime = ptrTime(r.Clock.Now())
	if !kb.IsScheduled() {
		kb.Status.Phase = kcv1.PhaseFailed
	}
	r.Metrics.backupFailed(kb.Namespace, kb.Name)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, reason, "FollowBackup", "%s", msg)
}

// reconcileSchedule takes a base backup at each tick of the schedule, at most one for all
// the ticks missed while the operator was down, and applies retention after each.
func (r *Reconciler) reconcileSchedule(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string) (ctrl.Result, error) {
	sched, err := kcv1.ParseSchedule(kb.Spec.Schedule)
	if err != nil { // Validate has parsed it already.
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	next := sched.Next(now)
	kb.Status.NextScheduleTime = ptrTime(next)
	r.Metrics.scheduled(kb.Namespace, kb.Name, sched.Next(next).Sub(next).Seconds())
	wait := next.Sub(now)
	if r.MaxScheduleWait > 0 && wait > r.MaxScheduleWait {
		wait = r.MaxScheduleWait
	}
	// The drills of spec.drill (drill.go) run beside the backups, suspended or not.
	drillWait, err := r.reconcileDrills(ctx, kb)
	if err != nil { // the backups go on: the drills are looked at again after RetryInterval
		log.FromContext(ctx).Info("cannot run the drill schedule", "error", err.Error())
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, ReasonDrillFailed, "Drill", "cannot run the drill schedule: %v", err)
		drillWait = r.RetryInterval
	}
	if drillWait > 0 {
		wait = min(wait, drillWait)
	}
	if paused, err := r.pausedForRestore(ctx, kb, w); err != nil || paused {
		return ctrl.Result{RequeueAfter: min(wait, r.RetryInterval)}, err
	}

	sc, ok, err := r.sidecarClient(ctx, kb, w, token)
	if err != nil || !ok {
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonWaiting, "waiting for a running pod of "+w.String())
		return ctrl.Result{RequeueAfter: min(wait, r.PollInterval)}, err
	}
	// Step 1: follow the running backup; when it ended, write it down as an object (records.go)
	// and, after a success, apply retention.
	if id := kb.Status.CurrentBackupID; id != "" {
		succeeded, done := r.followBackup(ctx, kb, sc)
		if !done {
			return ctrl.Result{RequeueAfter: min(wait, r.PollInterval)}, nil
		}
		r.recordBackup(ctx, kb, id, succeeded)
		if succeeded {
			r.applyRetention(ctx, kb, sc)
		}
	} else if r.windowDue(kb) {
		if _, err := r.refreshWindow(ctx, kb, sc); err != nil {
			kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarUnreachable, err.Error())
		} else {
			// One constant message: an idle schedule must not change its status each time.
			kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionTrue, kcv1.ReasonSidecarAnswering, "the sidecar answers and reports the archive's catalog")
		}
	}
	// Step 2: suspended: nothing new starts.
	if kb.Spec.Suspend {
		kb.Status.Phase = kcv1.PhaseSuspended
		kb.Status.NextScheduleTime = nil
		if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonSuspended {
			r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, kcv1.ReasonSuspended, "Schedule", "schedule suspended")
		}
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonSuspended, "the schedule is suspended")
		return ctrl.Result{RequeueAfter: drillWait}, nil
	}
	// Step 3: the newest tick due and not yet served starts a backup; older missed ticks
	// are skipped, so downtime yields one catch-up backup, not a burst.
	last := kb.CreationTimestamp.Time
	if kb.Status.LastScheduleTime != nil {
		last = kb.Status.LastScheduleTime.Time
	}
	if due, ok := latestTickBetween(sched, last, now); ok && kb.Status.CurrentBackupID == "" {
		if err := r.startBackup(ctx, kb, sc, "scheduled backup for "+due.UTC().Format(time.RFC3339)); err != nil {
			return ctrl.Result{RequeueAfter: min(wait, r.RetryInterval)}, nil
		}
		kb.Status.LastScheduleTime = ptrTime(due)
		return ctrl.Result{RequeueAfter: min(wait, r.PollInterval)}, nil
	}
	// Step 4: wait for the next tick, listing the archive again now and then.
	wait = min(wait, r.WindowRefreshInterval)
	kb.Status.Phase = kcv1.PhaseScheduled
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonBackupFailed && c.Reason != kcv1.ReasonBackupLost {
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonScheduled,
			"next backup at "+next.UTC().Format(time.RFC3339))
	}
	return ctrl.Result{RequeueAfter: wait}, nil
}

// latestTickBetween returns the newest tick of sched in (after, now].
func latestTickBetween(sched interface{ Next(time.Time) time.Time }, after, now time.Time) (time.Time, bool) {
	var due time.Time
	// Bounded, so a frequent schedule after a very long downtime cannot spin for long.
	for i := 0; i < 100000; i++ {
		t := sched.Next(after)
		if t.IsZero() || t.After(now) {
			break
		}
		due, after = t, t
	}
	return due, !due.IsZero()
}

// applyRetention prunes the archive after a scheduled backup. A failure is reported, not
// fatal: the next backup tries again.
func (r *Reconciler) applyRetention(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client) {
	ret := kb.Spec.Retention
	if ret == nil {
		return
	}
	res, err := sc.Prune(ctx, apiclient.PruneRequest{KeepBackups: int(ret.KeepBackups), KeepWithin: ret.KeepWithin})
	if err != nil {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "PruneFailed", "ApplyRetention", "applying retention failed: %v", err)
		return
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "Pruned", "ApplyRetention",
		"retention removed %d backups and %d WAL objects", len(res.RemovedBackups), res.RemovedWALObjects)
	r.deleteRecords(ctx, kb, res.RemovedBackups)
	if _, err := r.refreshWindow(ctx, kb, sc); err != nil {
		log.FromContext(ctx).Info("cannot read the catalog after pruning", "error", err.Error())
	}
}

// humanBytes writes n bytes for people, in binary units: "512B", "4.0KiB", "1.5GiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 4 {
		v, unit = v/1024, unit+1
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGTP"[unit])
}

func ptrTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.UTC())
	return &mt
}
