package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// restoreCheckTarget is step 1: it refuses a target outside the recovery window before
// anything is touched, and records what the later steps give back.
func (r *Reconciler) restoreCheckTarget(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, loc, token := run.kb, run.db, run.loc, run.token
	if err := restorableData(loc, db); err != nil {
		return r.restoreFailed(kb, kcv1.ReasonDataVolumeNotFound, err.Error())
	}
	if n := db.Replicas(); n > 1 {
		return r.restoreFailed(kb, kcv1.ReasonMultipleReplicas, replicasMessage(db, n)+"; nothing was changed")
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
	apps, res, ok, err := r.checkApplications(ctx, kb, db)
	if !ok {
		return res, err
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
	return r.restoreStart(ctx, kb, db, loc.Container, st, apps)
}

// restorableData says why the data directory at loc cannot be restored into: it is not on
// a claim (a restore, in place or into a new claim, needs one), or at its volume's root.
func restorableData(loc dataLocation, db workload) error {
	if loc.Volume.PersistentVolumeClaim == nil {
		return fmt.Errorf("the data directory %s of %s is on volume %q, which is not a PersistentVolumeClaim; a restore needs one",
			loc.DataDir, db, loc.Mount.Name)
	}
	_, err := jobDataDir(loc)
	return err
}

// checkApplications finds what stops the application (see applicationTargets) and refuses
// a restore with nothing to stop, unless the resource allows it explicitly. ok is false
// when the caller must return res: a refusal, or a wait after an error reading the owners.
func (r *Reconciler) checkApplications(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) ([]kcv1.ScaledWorkload, ctrl.Result, bool, error) {
	apps, err := r.applicationTargets(ctx, kb, db)
	var ns *notScalableError
	if errors.As(err, &ns) {
		res, err := r.restoreFailed(kb, kcv1.ReasonApplicationNotScalable, ns.Error()+"; this restore is refused and nothing was changed")
		return nil, res, false, err
	}
	var no *notOptedInError
	if errors.As(err, &no) {
		res, err := r.restoreFailed(kb, ReasonWorkloadNotOptedIn, notOptedInMessage(kb, no.what, "scale")+"; this restore is refused and nothing was changed")
		return nil, res, false, err
	}
	if err != nil {
		r.restoreProgress(kb, "cannot find what stops the application, retrying (nothing was changed): "+err.Error())
		return nil, ctrl.Result{RequeueAfter: r.PollInterval}, false, nil
	}
	if len(apps) > 0 || kb.Spec.RestoreAllowsNoApplication() {
		return apps, ctrl.Result{}, true, nil
	}
	why := "spec.applicationSelector is not set"
	if kb.Spec.ApplicationSelector != nil {
		why = "spec.applicationSelector selects no Deployment or StatefulSet in namespace " + kb.Namespace + " besides " + db.String()
	}
	res, err := r.restoreFailed(kb, kcv1.ReasonNoApplicationToStop, why+
		": Keycloak would keep running on the database while it is replaced. Set applicationSelector to the labels of Keycloak's "+
		"Deployment or StatefulSet (with the Keycloak Operator, its StatefulSet: the operator then scales the Keycloak resource), "+
		"or set spec.restore.allowWithoutApplication: true if nothing uses this database or you stopped Keycloak yourself; "+
		"this restore is refused and nothing was changed")
	return nil, res, false, err
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
	if st.Role == apiclient.RoleStandby {
		// Its sidecar archives nothing: the archive would never reach the server's flush
		// position (step ArchivingWAL), so refuse now, before anything stops.
		res, err := r.restoreFailed(kb, kcv1.ReasonServerIsStandby, fmt.Sprintf(
			"the running PostgreSQL server of %s is a standby (its sidecar archives nothing, so the archive would never hold its WAL): "+
				"promote it first (SELECT pg_promote()) and wait until its sidecar archives, or keep the primary's pod when scaling "+
				"to 1 replica (docs/replicas.md); nothing was changed", db))
		return st, false, res, err
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
		return r.checkPlan(ctx, kb, sc, st)
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
	return r.checkPlan(ctx, kb, sc, st)
}

// checkPlan asks the sidecar's planner for a dry run of the restore the Job will make (the
// same planner, the same target and timeline), so that what the Job would refuse is
// refused here, before anything is stopped. A refusal fails the restore; an archive the
// sidecar cannot read now is waited for within spec.restore.timeout. A sidecar of a
// release without the endpoint (404: its upgrade held) leaves the range check alone.
func (r *Reconciler) checkPlan(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client, st apiclient.Status) (apiclient.Status, bool, ctrl.Result, error) {
	req := apiclient.RestorePlanRequest{Target: kb.Spec.RestoreTo}
	if o := kb.Spec.Restore; o != nil && o.Timeline != nil {
		req.Timeline = uint32(*o.Timeline)
	}
	plan, err := sc.PlanRestore(ctx, req)
	var refused *apiclient.PlanRefusedError
	switch {
	case errors.As(err, &refused):
		res, err := r.restoreFailed(kb, kcv1.ReasonRestorePlanRefused, "the restore planner refuses restoreTo "+kb.Spec.RestoreTo+
			": "+refused.Message+" (set spec.restore.timeline or restoreTo accordingly); nothing was changed")
		return st, false, res, err
	case errors.Is(err, apiclient.ErrNotFound):
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "RestoreNotPlanned", "Restore",
			"the sidecar of this release does not offer a dry-run plan (%v): only the recovery ranges were checked; the restore Job plans before it restores", err)
		return st, true, ctrl.Result{}, nil
	case err != nil:
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonArchiveUnreadable,
			"cannot plan the restore to check restoreTo, retrying (nothing was changed): "+err.Error())
		return st, false, ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "RestorePlanned", "Restore",
		"the sidecar's planner accepts restoreTo %s: backup %s (consistent at %s), timeline %d, recovery stops at the %s",
		kb.Spec.RestoreTo, plan.BackupID, plan.BackupStopTime.UTC().Format(time.RFC3339), plan.Timeline, plan.Stop)
	return st, true, ctrl.Result{}, nil
}

// restoreStart records, once the target is accepted and the lock held, what the later
// steps give back, and moves on to stopping the application.
func (r *Reconciler) restoreStart(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, pgContainer string, st apiclient.Status, apps []kcv1.ScaledWorkload) (ctrl.Result, error) {
	rs := kb.Status.Restore
	if target, latest, _ := kcv1.ParseRestoreTarget(kb.Spec.RestoreTo); !latest {
		rs.TargetTime = ptrTime(target)
	}
	rs.StartTime = ptrTime(r.Clock.Now())
	rs.PreviousTimeline = int64(st.Timeline)
	rs.Database = &kcv1.ScaledWorkload{Kind: db.Kind, Name: db.Name(), Replicas: max(db.Replicas(), 1)}
	rs.JobName = restoreJobName(kb)
	rs.Applications = apps
	pods, err := db.pods(ctx, r.Client)
	if err != nil {
		return ctrl.Result{}, err
	}
	if p := runningPod(pods); p != nil {
		rs.RunAsUser, rs.RunAsGroup = effectiveIDs(&p.Spec, pgContainer)
	}
	var found []string
	for _, a := range apps {
		found = append(found, fmt.Sprintf("%s at %d replicas", describeScaled(a), a.Replicas))
	}
	kb.Status.Phase = kcv1.PhaseRestoring
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "RestoreStarted", "Restore",
		"restoring %s to %s (inside the recovery window); stopping the application: %s", db, kb.Spec.RestoreTo, orDefault(strings.Join(found, "; "), "none (spec.restore.allowWithoutApplication)"))
	r.advance(kb, kcv1.RestoreStoppingApplication, "target is inside the recovery window; stopping the application")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
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
