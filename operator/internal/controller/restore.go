package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// jobVolumeDir is where the restore Job mounts the whole data claim (without the
// PostgreSQL container's subPath), so that the data directory is always a subdirectory of
// the mount: kcbackup restore stages beside it and moves the old one aside on the same volume.
const jobVolumeDir = "/var/lib/kcbackup/pgvolume"

// jobDataDir returns the data directory as the restore Job sees it. It refuses a data
// directory at the root of its volume: the previous data could not be kept beside it.
func jobDataDir(loc dataLocation) (string, error) {
	mp := strings.TrimRight(loc.Mount.MountPath, "/")
	rel := strings.TrimPrefix(strings.TrimPrefix(loc.DataDir, mp), "/")
	p := path.Join(jobVolumeDir, loc.Mount.SubPath, rel)
	if p == jobVolumeDir {
		return "", fmt.Errorf("the data directory %s is the root of volume %q; a restore keeps the replaced data beside it on the "+
			"same volume, so PGDATA must be a subdirectory (for example %s/pgdata)", loc.DataDir, loc.Mount.Name, mp)
	}
	return p, nil
}

// postgresUID is the user the restore Job runs as when neither the PostgreSQL container nor
// its pod names one: the postgres user of the official image, which owns the data directory.
const postgresUID = 999

// reconcileRestore restores the database in place, one step per call:
//
//  1. CheckingTarget: the target lies inside the recovery window (or just past its end,
//     within the archive lag: wait for it); remember the replicas.
//  2. StoppingApplication: scale the application to zero, wait for its pods to go.
//  3. ArchivingWAL: take the server's flush position once, wait until the archive holds
//     the old timeline's WAL up to it.
//  4. StoppingDatabase: scale PostgreSQL to zero, wait for its pods to go.
//  5. RestoringData: a Job (owned by the resource, its UID recorded) restores into the
//     data volume, moving the old data aside.
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
func (r *Reconciler) reconcileRestore(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation, token string) (ctrl.Result, error) {
	if kb.Status.Restore == nil {
		kb.Status.Restore = &kcv1.RestoreStatus{Step: kcv1.RestoreCheckingTarget}
	}
	rs := kb.Status.Restore
	if rs.StepStartTime == nil {
		rs.StepStartTime = ptrTime(r.Clock.Now())
	}
	if res, over, err := r.restoreDeadline(ctx, kb, db); over {
		return res, err
	}
	if res, lost, err := r.keepRestoreLock(ctx, kb, db); lost {
		return res, err
	}
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	switch rs.Step {
	case kcv1.RestoreCheckingTarget:
		return r.restoreCheckTarget(ctx, kb, db, loc, token)

	case kcv1.RestoreStoppingApplication:
		return r.restoreStopApplication(ctx, kb)

	case kcv1.RestoreArchivingWAL:
		return r.restoreArchiveTail(ctx, kb, db, token)

	case kcv1.RestoreStoppingDatabase:
		ok, err := r.scaleDown(ctx, kb, db)
		if err != nil || !ok {
			r.restoreProgress(kb, "waiting for the pods of "+db.String()+" to stop")
			return next, err
		}
		r.advance(kb, kcv1.RestoreRestoringData, "PostgreSQL is stopped; restoring the data directory")
		return next, nil

	case kcv1.RestoreRestoringData:
		return r.restoreData(ctx, kb, db, loc)

	case kcv1.RestoreStartingDatabase:
		if err := r.scale(ctx, kb, db, rs.Database.Replicas); err != nil {
			return ctrl.Result{}, err
		}
		r.advance(kb, kcv1.RestoreWaitingForArchive, "PostgreSQL is starting; waiting for it to promote and archive on a new timeline")
		return next, nil

	case kcv1.RestoreWaitingForArchive:
		return r.restoreWaitForNewTimeline(ctx, kb, db, token)

	case kcv1.RestoreCleaningKeycloak:
		return r.restoreCleanKeycloak(ctx, kb, db, token)

	case kcv1.RestoreStartingApplication:
		if err := r.scaleApplicationsBack(ctx, kb); err != nil {
			return ctrl.Result{}, err
		}
		rs.Step = kcv1.RestoreDone
		rs.CompletionTime = ptrTime(r.Clock.Now())
		kb.Status.Phase = kcv1.PhaseRestored
		r.Metrics.restoreResult(kb.Namespace, kb.Name, false)
		msg := fmt.Sprintf("restored %s to %s; PostgreSQL runs on timeline %d", db, kb.Spec.RestoreTo, rs.Timeline)
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonRestored, msg)
		r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, kcv1.ReasonRestored, "Restore", "%s", msg)
		// Once more, to give the restore lock back.
		return next, nil
	}
	return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("unknown restore step %q", rs.Step))
}

// restoreStopApplication is step 2: the application workloads go to zero, and their pods.
func (r *Reconciler) restoreStopApplication(ctx context.Context, kb *kcv1.KeycloakBackup) (ctrl.Result, error) {
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	stopped := true
	for _, a := range kb.Status.Restore.Applications {
		w, err := getWorkload(ctx, r.Client, kb.Namespace, a.Kind, a.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return ctrl.Result{}, err
		}
		ok, err := r.scaleDown(ctx, kb, w)
		if err != nil {
			return ctrl.Result{}, err
		}
		stopped = stopped && ok
	}
	if !stopped {
		r.restoreProgress(kb, "waiting for the application's pods to stop")
		return next, nil
	}
	r.advance(kb, kcv1.RestoreArchivingWAL, "the application is stopped; waiting for the archive to hold the server's WAL")
	return next, nil
}

// restoreWaitForNewTimeline is step 7: PostgreSQL promoted past the replaced timeline and
// the sidecar archives on the new one.
func (r *Reconciler) restoreWaitForNewTimeline(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, token string) (ctrl.Result, error) {
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	rs := kb.Status.Restore
	sc, ok, err := r.sidecarClient(ctx, kb, db, token)
	if err != nil || !ok {
		r.restoreProgress(kb, "waiting for a running pod of "+db.String())
		return next, err
	}
	st, ok := r.sidecarStatus(ctx, kb, sc)
	if !ok || int64(st.Timeline) <= rs.PreviousTimeline || st.ArchivedLSN == "" || !st.Streaming {
		r.restoreProgress(kb, fmt.Sprintf("waiting for PostgreSQL to promote past timeline %d and the sidecar to archive on the new one", rs.PreviousTimeline))
		return next, nil
	}
	rs.Timeline = int64(st.Timeline)
	if _, err := r.refreshWindow(ctx, kb, sc); err != nil {
		log.FromContext(ctx).Info("cannot read the catalog after the restore", "error", err.Error())
	}
	r.advance(kb, kcv1.RestoreCleaningKeycloak, fmt.Sprintf("PostgreSQL promoted to timeline %d and archives it; cleaning the Keycloak database", st.Timeline))
	return next, nil
}

// restoreData is step 5: it follows the restore Job this resource owns, created once.
func (r *Reconciler) restoreData(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (ctrl.Result, error) {
	job, problem, err := r.ensureRestoreJob(ctx, kb, db, loc)
	if err != nil {
		return ctrl.Result{}, err
	}
	if problem != nil {
		// Fail closed: a Job that is not ours, or ours that vanished, may have touched (or
		// may still touch) the data directory, so PostgreSQL stays stopped.
		return r.restoreFailed(kb, problem.reason, problem.msg)
	}
	switch jobOutcome(job) {
	case jobRefused:
		return r.restoreGiveBack(ctx, kb, db, kcv1.ReasonRestoreRefused, fmt.Sprintf(
			"restore Job %s refused before touching the data directory: %s; PostgreSQL and the application were scaled back up",
			job.Name, r.jobMessage(ctx, job)))
	case jobSucceeded:
		r.Recorder.Eventf(kb, job, corev1.EventTypeNormal, "RestoreJobSucceeded", "Restore", "restore Job %s succeeded", job.Name)
		r.advance(kb, kcv1.RestoreStartingDatabase, "data restored; starting PostgreSQL to replay WAL and promote")
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	case jobFailed:
		msg := fmt.Sprintf("restore Job %s failed (%s); PostgreSQL and the application stay scaled to zero for inspection "+
			"(the previous data directory was moved aside next to %s, not deleted)", job.Name, r.jobMessage(ctx, job), loc.DataDir)
		return r.restoreFailed(kb, kcv1.ReasonRestoreJobFailed, msg)
	}
	r.restoreProgress(kb, "restore Job "+job.Name+" is running")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// restoreArchiveTail is step 3: before PostgreSQL stops, the archive must hold the WAL of
// the timeline the restore replaces up to the server's flush position, taken once, after
// the application stopped writing. Otherwise the old timeline's last transactions would
// depend on the sidecar's short drain at shutdown; a restore that cannot get them archived
// within spec.restore.timeout gives everything back (see restoreDeadline).
func (r *Reconciler) restoreArchiveTail(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, token string) (ctrl.Result, error) {
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	rs := kb.Status.Restore
	sc, ok, err := r.sidecarClient(ctx, kb, db, token)
	if err != nil || !ok {
		r.restoreProgress(kb, "waiting for a running pod of "+db.String()+" to read the server's flush position")
		return next, err
	}
	st, ok := r.sidecarStatus(ctx, kb, sc)
	if !ok {
		r.restoreProgress(kb, "waiting for the sidecar of "+db.String()+" to answer")
		return next, nil
	}
	if rs.FlushLSN == "" {
		if _, err := parseLSN(st.ServerFlushLSN); err != nil {
			r.restoreProgress(kb, "the sidecar reports no usable server flush position yet: "+err.Error())
			return next, nil
		}
		rs.FlushLSN = st.ServerFlushLSN
	}
	want, err := parseLSN(rs.FlushLSN)
	if err != nil {
		return r.restoreGiveBack(ctx, kb, db, kcv1.ReasonWALNotArchived, "status.restore.flushLSN: "+err.Error()+
			"; PostgreSQL was not stopped and the application was scaled back up")
	}
	if got, err := parseLSN(st.ArchivedLSN); err != nil || got < want {
		r.restoreProgress(kb, fmt.Sprintf("waiting for the archive to hold timeline %d's WAL up to the server's flush position %s (archived up to %s)",
			st.Timeline, rs.FlushLSN, orDefault(st.ArchivedLSN, "nothing yet")))
		return next, nil
	}
	r.advance(kb, kcv1.RestoreStoppingDatabase, fmt.Sprintf("the archive holds WAL up to the server's flush position %s (archived up to %s); stopping PostgreSQL",
		rs.FlushLSN, st.ArchivedLSN))
	return next, nil
}

// restoreCheckTarget is step 1: it refuses a target outside the recovery window before
// anything is touched, and records what the later steps give back.
func (r *Reconciler) restoreCheckTarget(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation, token string) (ctrl.Result, error) {
	if loc.Volume.PersistentVolumeClaim == nil {
		return r.restoreFailed(kb, kcv1.ReasonDataVolumeNotFound, fmt.Sprintf(
			"the data directory %s of %s is on volume %q, which is not a PersistentVolumeClaim; a restore needs one", loc.DataDir, db, loc.Mount.Name))
	}
	if _, err := jobDataDir(loc); err != nil {
		return r.restoreFailed(kb, kcv1.ReasonDataVolumeNotFound, err.Error())
	}
	if holder, err := r.lockHolder(ctx, db); err != nil || holder != nil && holder.UID != kb.UID {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.restoreConflict(kb, db, holder)
	}
	if msg, err := r.foreignRestoreJob(ctx, kb); err != nil || msg != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.restoreFailed(kb, kcv1.ReasonRestoreJobNotOwned, msg+"; this restore is refused and nothing was changed")
	}
	st, proceed, res, err := r.checkTargetAgainstArchive(ctx, kb, db, token)
	if !proceed {
		return res, err
	}
	// The lock, last: of two restores of one workload, the one that takes it runs.
	holder, err := r.acquireRestoreLock(ctx, kb, db)
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: time.Millisecond}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if holder != nil {
		return r.restoreConflict(kb, db, holder)
	}
	return r.restoreStart(ctx, kb, db, st)
}

// checkTargetAgainstArchive asks the sidecar for the archive's recovery ranges and decides
// whether restoreTo can be reached. proceed is false when the caller must return res: a
// wait (sidecar not answering, catalog unreadable, target not yet archived; all transient,
// bounded by spec.restore.timeout) or a refusal for good.
func (r *Reconciler) checkTargetAgainstArchive(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, token string) (apiclient.Status, bool, ctrl.Result, error) {
	retry := ctrl.Result{RequeueAfter: r.PollInterval}
	sc, ok, err := r.sidecarClient(ctx, kb, db, token)
	if err != nil || !ok {
		r.restoreProgress(kb, "waiting for a running pod of "+db.String()+" to check the target against the archive")
		return apiclient.Status{}, false, retry, err
	}
	st, ok := r.sidecarStatus(ctx, kb, sc)
	if !ok {
		r.restoreProgress(kb, "waiting for the sidecar of "+db.String()+" to answer")
		return st, false, retry, nil
	}
	cat, err := r.refreshWindow(ctx, kb, sc)
	if err != nil {
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarUnreachable, err.Error())
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonArchiveUnreadable,
			"cannot read the archive's catalog to check restoreTo, retrying (nothing was changed): "+err.Error())
		return st, false, retry, nil
	}
	if cat.Window == nil {
		res, err := r.restoreFailed(kb, kcv1.ReasonNoBackup, "the archive holds no complete base backup; nothing to restore from")
		return st, false, res, err
	}
	target, latest, _ := kcv1.ParseRestoreTarget(kb.Spec.RestoreTo)
	if latest {
		return st, true, ctrl.Result{}, nil
	}
	lag := time.Duration(st.ArchiveLagSeconds * float64(time.Second))
	verdict, end := judgeTarget(cat, target, r.Clock.Now(), lag, kb.Spec.Restore)
	switch verdict {
	case targetNotYet:
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonTargetNotYetArchived, fmt.Sprintf(
			"restoreTo %s is %s past the recovery window's end %s, within the archive lag (%s) plus %s: waiting for the window "+
				"to reach it, until %s at the latest (nothing was changed)", kb.Spec.RestoreTo, target.Sub(end).Round(time.Second),
			end.UTC().Format(time.RFC3339), lag.Round(time.Second), windowEdgeMargin, target.Add(lag+windowEdgeMargin).UTC().Format(time.RFC3339)))
		return st, false, retry, nil
	case targetOutside:
		res, err := r.restoreFailed(kb, kcv1.ReasonTargetOutsideWindow, fmt.Sprintf(
			"restoreTo %s is outside every recovery range (%s), and not within the archive lag (%s) plus %s of the newest one's end; nothing was changed",
			kb.Spec.RestoreTo, describeRanges(cat), lag.Round(time.Second), windowEdgeMargin))
		return st, false, res, err
	}
	return st, true, ctrl.Result{}, nil
}

// restoreStart records, once the target is accepted and the lock held, what the later
// steps give back, and moves on to stopping the application.
func (r *Reconciler) restoreStart(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, st apiclient.Status) (ctrl.Result, error) {
	rs := kb.Status.Restore
	if target, latest, _ := kcv1.ParseRestoreTarget(kb.Spec.RestoreTo); !latest {
		rs.TargetTime = ptrTime(target)
	}
	rs.StartTime = ptrTime(r.Clock.Now())
	rs.PreviousTimeline = int64(st.Timeline)
	rs.Database = &kcv1.ScaledWorkload{Kind: db.Kind, Name: db.Name(), Replicas: max(db.Replicas(), 1)}
	rs.JobName = restoreJobName(kb)
	rs.Applications = nil
	if kb.Spec.ApplicationSelector != nil {
		apps, err := listWorkloads(ctx, r.Client, kb.Namespace, kb.Spec.ApplicationSelector)
		if err != nil {
			return ctrl.Result{}, err
		}
		for _, a := range apps {
			if a.Kind == db.Kind && a.Name() == db.Name() {
				continue
			}
			rs.Applications = append(rs.Applications, kcv1.ScaledWorkload{Kind: a.Kind, Name: a.Name(), Replicas: a.Replicas()})
		}
	}
	kb.Status.Phase = kcv1.PhaseRestoring
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "RestoreStarted", "Restore",
		"restoring %s to %s (inside the recovery window); stopping %d application workload(s)", db, kb.Spec.RestoreTo, len(rs.Applications))
	r.advance(kb, kcv1.RestoreStoppingApplication, "target is inside the recovery window; stopping the application")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// scaleDown scales w to zero and reports whether all its pods are gone.
func (r *Reconciler) scaleDown(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (bool, error) {
	if err := r.scale(ctx, kb, w, 0); err != nil {
		return false, err
	}
	pods, err := w.pods(ctx, r.Client)
	if err != nil {
		return false, err
	}
	return len(pods) == 0, nil
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
	r.Metrics.restoreResult(kb.Namespace, kb.Name, true)
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
func (r *Reconciler) restoreGiveBack(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, reason, msg string) (ctrl.Result, error) {
	rs := kb.Status.Restore
	if rs.Database != nil {
		if err := r.scale(ctx, kb, db, rs.Database.Replicas); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := r.scaleApplicationsBack(ctx, kb); err != nil {
		return ctrl.Result{}, err
	}
	return r.restoreFailed(kb, reason, msg)
}

// scaleApplicationsBack gives the application workloads their replicas from before the
// restore; one deleted meanwhile is skipped.
func (r *Reconciler) scaleApplicationsBack(ctx context.Context, kb *kcv1.KeycloakBackup) error {
	for _, a := range kb.Status.Restore.Applications {
		w, err := getWorkload(ctx, r.Client, kb.Namespace, a.Kind, a.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if err := r.scale(ctx, kb, w, a.Replicas); err != nil {
			return err
		}
	}
	return nil
}

// restoreDeadline ends the restore when its current step has waited longer than
// spec.restore.timeout (the restore Job gets a minute more: it has the timeout as its own
// activeDeadlineSeconds). over is true when it did.
func (r *Reconciler) restoreDeadline(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) (ctrl.Result, bool, error) {
	rs := kb.Status.Restore
	timeout := kb.Spec.RestoreTimeout()
	limit := timeout
	switch rs.Step {
	case kcv1.RestoreRestoringData:
		limit += time.Minute
	case kcv1.RestoreStartingDatabase, kcv1.RestoreStartingApplication, kcv1.RestoreDone:
		return ctrl.Result{}, false, nil
	}
	waited := r.Clock.Since(rs.StepStartTime.Time)
	if waited <= limit {
		return ctrl.Result{}, false, nil
	}
	what := fmt.Sprintf("step %s did not finish within spec.restore.timeout %s (waited %s)", rs.Step, timeout, waited.Round(time.Second))
	var res ctrl.Result
	var err error
	switch rs.Step {
	case kcv1.RestoreCheckingTarget:
		res, err = r.restoreFailed(kb, kcv1.ReasonRestoreTimedOut, what+"; nothing was changed")
	case kcv1.RestoreArchivingWAL:
		res, err = r.restoreGiveBack(ctx, kb, db, kcv1.ReasonWALNotArchived, fmt.Sprintf(
			"the archive did not reach the server's flush position %s within spec.restore.timeout %s (waited %s), so the WAL "+
				"the restore would replace is not all archived; PostgreSQL was not stopped, the application was scaled back up and "+
				"nothing was changed: check the sidecar's archiving (kcbackup_archive_lag_seconds, kcbackup_storage_up, its log), "+
				"then create the restore again", orDefault(rs.FlushLSN, "(not read yet)"), timeout, waited.Round(time.Second)))
	case kcv1.RestoreStoppingApplication, kcv1.RestoreStoppingDatabase:
		res, err = r.restoreGiveBack(ctx, kb, db, kcv1.ReasonRestoreTimedOut, what+
			"; the data directory was not touched, and PostgreSQL and the application were scaled back up")
	case kcv1.RestoreRestoringData:
		res, err = r.restoreFailed(kb, kcv1.ReasonRestoreTimedOut, what+
			"; PostgreSQL and the application stay scaled to zero for inspection (the previous data directory may have been moved aside, never deleted)")
	default: // WaitingForArchive, CleaningKeycloak: the restored PostgreSQL runs.
		res, err = r.restoreFailed(kb, kcv1.ReasonRestoreTimedOut, what+
			"; the restored PostgreSQL was started and is left running, the application stays at zero: check PostgreSQL's log "+
			"(recovery may still be replaying WAL) and scale the application back yourself")
	}
	return res, true, err
}

// restoreCleanKeycloak is step 7: the restored database loses its stale cluster members
// and the sessions spec.restore.sessions names, before Keycloak starts on it.
func (r *Reconciler) restoreCleanKeycloak(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, token string) (ctrl.Result, error) {
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	hc := r.HTTPClient
	if hc == nil {
		// Deleting many sessions may take longer than a status call; the sidecar's write
		// timeout (2 minutes) bounds it.
		hc = &http.Client{Timeout: 110 * time.Second}
	}
	sc, ok, err := r.sidecarClientWith(ctx, kb, db, token, hc)
	if err != nil || !ok {
		r.restoreProgress(kb, "waiting for a running pod of "+db.String()+" to clean the Keycloak database")
		return next, err
	}
	req := apiclient.KeycloakCleanupRequest{Database: kb.Spec.RestoreKeycloakDatabase(), Sessions: string(kb.Spec.RestoreSessions())}
	res, err := sc.KeycloakCleanup(ctx, req)
	if errors.Is(err, apiclient.ErrSchemaMismatch) {
		return r.restoreFailed(kb, kcv1.ReasonKeycloakSchemaMismatch, fmt.Sprintf(
			"cannot remove sessions %q from database %q: %v; PostgreSQL runs restored, the application stays at zero "+
				"(set spec.restore.keycloakDatabase to Keycloak's database, or scale the application back yourself)",
			req.Sessions, req.Database, err))
	}
	if err != nil {
		r.restoreProgress(kb, "cannot clean the Keycloak database yet, retrying: "+err.Error())
		return next, nil
	}
	kb.Status.Restore.Keycloak = &kcv1.KeycloakCleanup{
		Database: res.Database, Sessions: kcv1.Sessions(res.Sessions), JGroupsPingRows: res.JGroupsPingRows,
		UserSessionRows: res.UserSessionRows, ClientSessionRows: res.ClientSessionRows, Skipped: res.Skipped,
	}
	msg := fmt.Sprintf("cleaned Keycloak database %q (sessions %s): %d jgroups_ping rows, %d user sessions and %d client sessions removed",
		res.Database, res.Sessions, res.JGroupsPingRows, res.UserSessionRows, res.ClientSessionRows)
	if len(res.Skipped) > 0 {
		msg += "; skipped: " + strings.Join(res.Skipped, "; ")
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "KeycloakCleaned", "Restore", "%s", msg)
	r.advance(kb, kcv1.RestoreStartingApplication, msg+"; starting the application")
	return next, nil
}

// jobMessage is what the restore Job's container said last (its termination message, the
// tail of its log), or its failure condition when no pod is left.
func (r *Reconciler) jobMessage(ctx context.Context, job *batchv1.Job) string {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabels{batchv1.JobNameLabel: job.Name}); err == nil {
		for _, p := range pods.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if t := cs.State.Terminated; cs.Name == "restore" && t != nil && strings.TrimSpace(t.Message) != "" {
					return lastLine(t.Message, 1024)
				}
			}
		}
	}
	for _, c := range job.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return orDefault(c.Message, c.Reason)
		}
	}
	return "no message; see the Job's pod log"
}

// lastLine returns the last non-empty line of s, cut to at most n bytes.
func lastLine(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > n {
		l = l[:n]
	}
	return l
}

func restoreJobName(kb *kcv1.KeycloakBackup) string {
	name := kb.Name
	if len(name) > 50 {
		name = name[:50]
	}
	return name + "-restore"
}

// jobProblem is why the restore Job cannot be trusted: its Ready reason and message.
type jobProblem struct{ reason, msg string }

// ensureRestoreJob returns the restore Job this resource owns, creating it once and
// recording its UID in status.restore.jobUID. It is read from the API server, not the
// cache, since a Job missing from a lagging cache must not look lost. A problem is
// returned, and nothing created, when a Job of that name is not this resource's (a
// leftover of a deleted resource of the same name is never taken as this restore's
// result), or when the recorded Job disappeared: creating it again would restore twice
// over a data directory the first one may already have moved aside.
func (r *Reconciler) ensureRestoreJob(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (*batchv1.Job, *jobProblem, error) {
	rs := kb.Status.Restore
	job := &batchv1.Job{}
	key := client.ObjectKey{Namespace: kb.Namespace, Name: rs.JobName}
	err := r.APIReader.Get(ctx, key, job)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("get restore Job %s: %w", key.Name, err)
	}
	found := err == nil
	switch {
	case rs.JobUID != "" && (!found || job.UID != rs.JobUID):
		return nil, &jobProblem{kcv1.ReasonRestoreJobLost, fmt.Sprintf(
			"restore Job %s (uid %s) disappeared before its outcome was seen; it is not created again, because it may already have "+
				"moved the data directory aside. PostgreSQL and the application stay scaled to zero: on claim %s, check whether %s "+
				"was restored or moved aside (kept next to it, never deleted) and the Job's events; then scale PostgreSQL and the "+
				"application back yourself, or create a new KeycloakBackup to restore again",
			key.Name, rs.JobUID, loc.Volume.PersistentVolumeClaim.ClaimName, loc.DataDir)}, nil
	case found && !metav1.IsControlledBy(job, kb):
		return nil, &jobProblem{kcv1.ReasonRestoreJobNotOwned, notOwnedMessage(job, kb) +
			"; it was not taken as this restore's result and no restore Job was created. PostgreSQL and the application stay " +
			"scaled to zero, since that Job may act on the data volume: check what it did (its pod log, the data directory " +
			loc.DataDir + "), delete it, then scale PostgreSQL and the application back, or create a new KeycloakBackup"}, nil
	case found:
		rs.JobUID = job.UID // created by this resource in a reconcile whose status patch was lost
		return job, nil, nil
	}
	job, err = r.buildRestoreJob(kb, db, loc)
	if err != nil {
		return nil, nil, err
	}
	if err := r.Client.Create(ctx, job); err != nil {
		return nil, nil, fmt.Errorf("create restore Job %s: %w", key.Name, err)
	}
	rs.JobUID = job.UID
	r.Recorder.Eventf(kb, job, corev1.EventTypeNormal, "RestoreJobCreated", "Restore",
		"created Job %s (uid %s) restoring %s into claim %s", job.Name, job.UID, kb.Spec.RestoreTo, loc.Volume.PersistentVolumeClaim.ClaimName)
	return job, nil, nil
}

// foreignRestoreJob returns a message when a Job with the name of kb's restore Job exists
// and kb does not control it; it is checked before anything is stopped.
func (r *Reconciler) foreignRestoreJob(ctx context.Context, kb *kcv1.KeycloakBackup) (string, error) {
	job := &batchv1.Job{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: restoreJobName(kb)}, job)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get Job %s: %w", restoreJobName(kb), err)
	}
	if metav1.IsControlledBy(job, kb) {
		return "", nil
	}
	return notOwnedMessage(job, kb) + " (delete it once you have checked it restores nothing, then create the restore again)", nil
}

// notOwnedMessage says which Job is in the way and who controls it.
func notOwnedMessage(job *batchv1.Job, kb *kcv1.KeycloakBackup) string {
	owner := "no controller"
	if ref := metav1.GetControllerOf(job); ref != nil {
		owner = fmt.Sprintf("controller %s %q uid %s", ref.Kind, ref.Name, ref.UID)
	}
	return fmt.Sprintf("Job %s, which would be this restore's Job, exists and is not owned by KeycloakBackup %q uid %s (it has %s: "+
		"a leftover of a deleted resource of the same name, or someone else's)", job.Name, kb.Name, kb.UID, owner)
}

// buildRestoreJob returns the Job that runs `kcbackup restore` against the data volume, as
// the user owning the data directory.
func (r *Reconciler) buildRestoreJob(kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (*batchv1.Job, error) {
	env, err := storageEnv(&kb.Spec.Storage)
	if err != nil {
		return nil, err
	}
	storageURL := env[0].Value
	vols, mounts := storageVolumes(&kb.Spec.Storage)
	binVol, binMount := binaryVolume(r.SidecarImage)
	vols, mounts = append(vols, binVol), append(mounts, binMount)
	vols = append(vols, corev1.Volume{Name: "pgdata", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: loc.Volume.PersistentVolumeClaim.ClaimName}}})
	mounts = append(mounts, corev1.VolumeMount{Name: "pgdata", MountPath: jobVolumeDir})
	dataDir, err := jobDataDir(loc)
	if err != nil {
		return nil, err
	}

	tmpl := db.Template()
	podSC := tmpl.Spec.SecurityContext.DeepCopy()
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	uid, gid := int64(postgresUID), int64(postgresUID)
	if podSC.RunAsUser != nil {
		uid = *podSC.RunAsUser
	}
	if podSC.RunAsGroup != nil {
		gid = *podSC.RunAsGroup
	}
	for _, c := range tmpl.Spec.Containers {
		if c.Name == loc.Container && c.SecurityContext != nil {
			if c.SecurityContext.RunAsUser != nil {
				uid = *c.SecurityContext.RunAsUser
			}
			if c.SecurityContext.RunAsGroup != nil {
				gid = *c.SecurityContext.RunAsGroup
			}
		}
	}
	csc := restrictedSecurityContext()
	csc.RunAsUser, csc.RunAsGroup = &uid, &gid

	labels := map[string]string{
		"app.kubernetes.io/name":       "kcbackup-restore",
		"app.kubernetes.io/managed-by": "kcbackup-operator",
		"keycloak.org/keycloakbackup":  kb.Name,
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: kb.Status.Restore.JobName, Namespace: kb.Namespace, Labels: labels},
		Spec: batchv1.JobSpec{
			// A restore that failed halfway is for a human to inspect, not to retry blindly.
			BackoffLimit:          ptr.To[int32](0),
			ActiveDeadlineSeconds: ptr.To(int64(kb.Spec.RestoreTimeout().Seconds())),
			// Exit 4 means the data directory was not touched: the Job fails through this
			// rule, so its Failed condition says so (reason PodFailurePolicy) even after the
			// pod is gone, and the operator gives the database back.
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action: batchv1.PodFailurePolicyActionFailJob,
				OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
					ContainerName: ptr.To("restore"), Operator: batchv1.PodFailurePolicyOnExitCodesOpIn,
					Values: []int32{apiclient.ExitRestoreUntouched},
				},
			}}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					RestartPolicy:      corev1.RestartPolicyNever,
					SecurityContext:    podSC,
					ServiceAccountName: tmpl.Spec.ServiceAccountName,
					ImagePullSecrets:   tmpl.Spec.ImagePullSecrets,
					NodeSelector:       tmpl.Spec.NodeSelector,
					Tolerations:        tmpl.Spec.Tolerations,
					Volumes:            vols,
					Containers: []corev1.Container{{
						Name:  "restore",
						Image: r.SidecarImage,
						// Run through the image volume: restore_command names this path.
						Command: []string{KcbackupPath},
						// restore_command fetches through the sidecar beside PostgreSQL, with the
						// token mounted in both; PostgreSQL never sees storage credentials.
						Args: []string{"restore", "--storage", storageURL, "--pgdata", dataDir,
							"--to", kb.Spec.RestoreTo, "--move-aside", "--handover", "--timeline", restoreTimeline(kb.Spec.Restore),
							"--fetch-via", fmt.Sprintf("http://127.0.0.1:%d", apiclient.DefaultPort),
							"--fetch-token-file", tokenFile},
						Env:          env,
						VolumeMounts: mounts,
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("100m"),
							corev1.ResourceMemory: resource.MustParse("128Mi"),
						}},
						SecurityContext: csc,
						// The error kcbackup prints last becomes the termination message.
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
				},
			},
		},
	}
	if err := controllerutil.SetControllerReference(kb, job, r.Client.Scheme()); err != nil {
		return nil, err
	}
	return job, nil
}

type outcome int

const (
	jobRunning outcome = iota
	jobSucceeded
	jobFailed
	// jobRefused: it failed with ExitRestoreUntouched; the data directory is as it was.
	jobRefused
)

// jobOutcome reads the Job's terminal conditions (and their early *Target forms).
func jobOutcome(job *batchv1.Job) outcome {
	for _, c := range job.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete, batchv1.JobSuccessCriteriaMet:
			return jobSucceeded
		case batchv1.JobFailed, batchv1.JobFailureTarget:
			// Only the pod failure policy's rule for exit 4 makes a refusal; anything else
			// (a deadline, another exit status, an evicted pod) may have touched the data.
			if c.Reason == batchv1.JobReasonPodFailurePolicy &&
				strings.Contains(c.Message, fmt.Sprintf("exit code %d ", apiclient.ExitRestoreUntouched)) {
				return jobRefused
			}
			return jobFailed
		}
	}
	return jobRunning
}

// windowEdgeMargin is how far past the archive lag a target may lie beyond the recovery
// window's end and still be waited for: the window's end is when the newest WAL was
// stored, which trails the server by the lag and by the sidecar's upload cadence.
const windowEdgeMargin = time.Minute

// targetVerdict is what the target check decides.
type targetVerdict int

const (
	// targetInside: a restorable range holds the target.
	targetInside targetVerdict = iota
	// targetNotYet: the target lies just past the newest range's end, by no more than the
	// archive lag plus windowEdgeMargin, and that much time has not yet passed since the
	// target: the archive may still reach it. Wait and check again.
	targetNotYet
	// targetOutside: before every range, in a hole, or too far past the end. Refuse.
	targetOutside
)

// judgeTarget decides whether target can be restored to, from the archive's ranges (of the
// chosen timeline, when spec.restore.timeline is set), the time now and the archive lag the
// sidecar reports. end is the newest range's end. The restore Job plans exactly; this only
// refuses, before anything is stopped, what no range holds or will hold.
func judgeTarget(cat apiclient.Catalog, target, now time.Time, lag time.Duration, o *kcv1.RestoreOptions) (targetVerdict, time.Time) {
	ranges := cat.Windows
	if len(ranges) == 0 && cat.Window != nil { // a sidecar that reports only the newest range
		ranges = []apiclient.RecoveryWindow{*cat.Window}
	}
	var newest *apiclient.RecoveryWindow
	for i, w := range ranges {
		if o != nil && o.Timeline != nil && w.Timeline != 0 && int64(w.Timeline) != *o.Timeline {
			continue
		}
		if w.Contains(target) {
			return targetInside, w.Latest
		}
		if newest == nil || w.Latest.After(newest.Latest) {
			newest = &ranges[i]
		}
	}
	if newest == nil {
		return targetOutside, time.Time{}
	}
	reach := lag + windowEdgeMargin
	// A range ending at a hole never grows: the WAL after it is lost.
	if newest.Hole || !target.After(newest.Latest) || target.Sub(newest.Latest) > reach || now.Sub(target) > reach {
		return targetOutside, newest.Latest
	}
	return targetNotYet, newest.Latest
}

func describeRanges(cat apiclient.Catalog) string {
	var out []string
	for _, w := range cat.Windows {
		hole := ""
		if w.Hole {
			hole = ", then a hole"
		}
		out = append(out, fmt.Sprintf("timeline %d: %s to %s%s", w.Timeline, w.Earliest.UTC().Format(time.RFC3339), w.Latest.UTC().Format(time.RFC3339), hole))
	}
	if len(out) == 0 && cat.Window != nil {
		out = append(out, cat.Window.Earliest.UTC().Format(time.RFC3339)+" to "+cat.Window.Latest.UTC().Format(time.RFC3339))
	}
	return strings.Join(out, "; ")
}

// restoreTimeline is the restore Job's --timeline: spec.restore.timeline, or "latest" (the
// newest timeline whose range holds the target; a time on two diverging timelines is refused).
func restoreTimeline(o *kcv1.RestoreOptions) string {
	if o != nil && o.Timeline != nil {
		return strconv.FormatInt(*o.Timeline, 10)
	}
	return "latest"
}
