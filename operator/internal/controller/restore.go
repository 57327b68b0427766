package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// restoreRun is what every restore step works on: the resource, the PostgreSQL workload,
// where its data lies and the sidecar's admin token.
type restoreRun struct {
	kb    *kcv1.KeycloakBackup
	db    workload
	loc   dataLocation
	token string
}

// restoreStep is one row of the restore's table: its handler, its deadline and what ends
// the restore when the step waited past it.
type restoreStep struct {
	// run does the step's work once. It moves status.restore.step on (advance) when the
	// step is done, or asks to be called again.
	run func(r *Reconciler, ctx context.Context, run *restoreRun) (ctrl.Result, error)
	// extra is added to spec.restore.timeout for this step's deadline.
	extra time.Duration
	// timedOut ends the restore once the step waited past its deadline; nil: the step
	// never waits (it acts and moves on), so it has no deadline.
	timedOut func(r *Reconciler, ctx context.Context, run *restoreRun, what string) (ctrl.Result, error)
}

// restoreSteps is the in-place restore, one step per row, in order:
//
//  1. CheckingTarget: the target lies inside the recovery window (or just past its end,
//     within the archive lag: wait for it); remember the replicas.
//  2. StoppingApplication: scale the application to zero, wait for its pods to go.
//  3. ArchivingWAL: take the server's flush position once, wait until the archive holds
//     the old timeline's WAL up to it.
//  4. StoppingDatabase: scale PostgreSQL to zero, wait for its pods to go.
//  5. RestoringData: a Job (owned by the resource, its UID recorded) restores into the
//     data volume, moving the old data aside. It gets a minute more than the timeout: the
//     Job has the timeout as its own activeDeadlineSeconds.
//  6. StartingDatabase: scale PostgreSQL back; it replays WAL to the target and promotes.
//  7. WaitingForArchive: wait until the sidecar archives on the new timeline.
//  8. CleaningKeycloak: through the sidecar, empty jgroups_ping and remove the sessions
//     spec.restore.sessions names.
//  9. StartingApplication: scale the application back. Restored.
//
// Nothing is touched before step 1 succeeds, and step 1 takes the workload's restore lock.
// The steps are recorded in status.restore, so the restore resumes where it stood after an
// operator restart and never runs twice. Each waiting step has spec.restore.timeout; when
// the restore Job refuses, or a step before it times out, the data directory is untouched
// and PostgreSQL and the application are scaled back.
var restoreSteps = map[kcv1.RestoreStep]restoreStep{
	kcv1.RestoreCheckingTarget:      {run: (*Reconciler).restoreCheckTarget, timedOut: (*Reconciler).timedOutUntouched},
	kcv1.RestoreStoppingApplication: {run: (*Reconciler).restoreStopApplication, timedOut: (*Reconciler).timedOutGiveBack},
	kcv1.RestoreArchivingWAL:        {run: (*Reconciler).restoreArchiveTail, timedOut: (*Reconciler).timedOutWALNotArchived},
	kcv1.RestoreStoppingDatabase:    {run: (*Reconciler).restoreStopDatabase, timedOut: (*Reconciler).timedOutGiveBack},
	kcv1.RestoreRestoringData:       {run: (*Reconciler).restoreData, extra: time.Minute, timedOut: (*Reconciler).timedOutDataTouched},
	kcv1.RestoreStartingDatabase:    {run: (*Reconciler).restoreStartDatabase},
	kcv1.RestoreWaitingForArchive:   {run: (*Reconciler).restoreWaitForNewTimeline, timedOut: (*Reconciler).timedOutRestoredRunning},
	kcv1.RestoreCleaningKeycloak:    {run: (*Reconciler).restoreCleanKeycloak, timedOut: (*Reconciler).timedOutRestoredRunning},
	kcv1.RestoreStartingApplication: {run: (*Reconciler).restoreFinish},
}

// reconcileRestore runs the current step of the restore (see restoreSteps) once: after
// its deadline has been checked and the workload's restore lock kept.
func (r *Reconciler) reconcileRestore(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb := run.kb
	if kb.Status.Restore == nil {
		kb.Status.Restore = &kcv1.RestoreStatus{Step: kcv1.RestoreCheckingTarget}
	}
	rs := kb.Status.Restore
	if rs.StepStartTime == nil {
		rs.StepStartTime = ptrTime(r.Clock.Now())
	}
	steps := restoreSteps
	if kb.IsClone() {
		steps = cloneSteps // clone.go: production is never stopped, so no restore lock
	}
	step, ok := steps[rs.Step]
	if !ok {
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("unknown restore step %q in status.restore.step", rs.Step))
	}
	if res, over, err := r.restoreDeadline(ctx, run, step); over {
		return res, err
	}
	if !kb.IsClone() {
		if res, lost, err := r.keepRestoreLock(ctx, kb, run.db); lost {
			return res, err
		}
	}
	return step.run(r, ctx, run)
}

// restoreDeadline ends the restore when its current step has waited longer than
// spec.restore.timeout plus the step's extra time. over is true when it did.
func (r *Reconciler) restoreDeadline(ctx context.Context, run *restoreRun, step restoreStep) (ctrl.Result, bool, error) {
	rs := run.kb.Status.Restore
	if step.timedOut == nil {
		return ctrl.Result{}, false, nil
	}
	timeout := run.kb.Spec.RestoreTimeout()
	waited := r.Clock.Since(rs.StepStartTime.Time)
	if waited <= timeout+step.extra {
		return ctrl.Result{}, false, nil
	}
	what := fmt.Sprintf("step %s did not finish within spec.restore.timeout %s (waited %s)", rs.Step, timeout, waited.Round(time.Second))
	res, err := step.timedOut(r, ctx, run, what)
	return res, true, err
}

// timedOutUntouched ends a restore that timed out before it changed anything.
func (r *Reconciler) timedOutUntouched(_ context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	return r.restoreFailed(run.kb, kcv1.ReasonRestoreTimedOut, what+"; nothing was changed")
}

// timedOutGiveBack ends a restore that timed out while stopping things: nothing was
// restored yet, so everything gets its replicas back.
func (r *Reconciler) timedOutGiveBack(ctx context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	return r.restoreGiveBack(ctx, run, kcv1.ReasonRestoreTimedOut, what+
		"; the data directory was not touched, and PostgreSQL and the application were scaled back up")
}

// timedOutWALNotArchived ends a restore whose archive never reached the server's flush
// position: PostgreSQL was never stopped.
func (r *Reconciler) timedOutWALNotArchived(ctx context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	rs := run.kb.Status.Restore
	return r.restoreGiveBack(ctx, run, kcv1.ReasonWALNotArchived, fmt.Sprintf(
		"the archive did not reach the server's flush position %s (%s), so the WAL "+
			"the restore would replace is not all archived; PostgreSQL was not stopped, the application was scaled back up and "+
			"nothing was changed: check the sidecar's archiving (kcbackup_archive_lag_seconds, kcbackup_storage_up, its log), "+
			"then create the restore again", orDefault(rs.FlushLSN, "(not read yet)"), what))
}

// timedOutDataTouched ends a restore whose Job may have moved the data aside: everything
// stays stopped for a human.
func (r *Reconciler) timedOutDataTouched(_ context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	return r.restoreFailed(run.kb, kcv1.ReasonRestoreTimedOut, what+
		"; PostgreSQL and the application stay scaled to zero for inspection (the previous data directory may have been moved aside, never deleted)")
}

// timedOutRestoredRunning ends a restore whose restored PostgreSQL was started.
func (r *Reconciler) timedOutRestoredRunning(_ context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	return r.restoreFailed(run.kb, kcv1.ReasonRestoreTimedOut, what+
		"; the restored PostgreSQL was started and is left running, the application stays at zero: check PostgreSQL's log "+
		"(recovery may still be replaying WAL) and scale the application back yourself")
}

func (r *Reconciler) advance(kb *kcv1.KeycloakBackup, step kcv1.RestoreStep, msg string) {
	kb.Status.Restore.Step = step
	kb.Status.Restore.StepStartTime = ptrTime(r.Clock.Now())
	r.restoreProgress(kb, msg)
}

func (r *Reconciler) restoreProgress(kb *kcv1.KeycloakBackup, msg string) {
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreInProgress,
		"step "+string(kb.Status.Restore.Step)+": "+msg)
}

// restoreFailed ends the restore for good: it never runs twice. It comes back once more to
// give the restore lock back.
func (r *Reconciler) restoreFailed(kb *kcv1.KeycloakBackup, reason, msg string) (ctrl.Result, error) {
	kb.Status.Phase = kcv1.PhaseFailed
	kb.Status.Restore.CompletionTime = ptrTime(r.Clock.Now())
	if !kb.IsDrill() { // a drill's outcome has its own series and alert (drill.go)
		r.Metrics.restoreResult(kb.Namespace, kb.Name, true)
	}
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, reason, "Restore", "%s", msg)
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// restoreConflict refuses a restore of a workload another restore holds; nothing was touched.
func (r *Reconciler) restoreConflict(kb *kcv1.KeycloakBackup, db workload, holder *kcv1.KeycloakBackup) (ctrl.Result, error) {
	return r.restoreFailed(kb, kcv1.ReasonRestoreConflict, fmt.Sprintf(
		"KeycloakBackup %q is already restoring %s (it holds the annotation %s); this restore is refused and nothing was changed",
		holder.Name, db, RestoreLockAnnotation))
}

// restoreGiveBack ends a restore whose data directory was never touched: PostgreSQL and
// the application get their replicas back, then it fails with reason.
func (r *Reconciler) restoreGiveBack(ctx context.Context, run *restoreRun, reason, msg string) (ctrl.Result, error) {
	kb := run.kb
	rs := kb.Status.Restore
	if rs.Database != nil {
		if err := r.scale(ctx, kb, run.db, rs.Database.Replicas); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := r.scaleApplicationsBack(ctx, kb); err != nil {
		return ctrl.Result{}, err
	}
	return r.restoreFailed(kb, reason, msg)
}
