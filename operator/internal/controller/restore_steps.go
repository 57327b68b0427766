package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// restoreStopApplication is step 2: the application workloads go to zero, and their pods.
func (r *Reconciler) restoreStopApplication(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb := run.kb
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	stopped := true
	for _, a := range kb.Status.Restore.Applications {
		err := r.setScale(ctx, kb, a, 0)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return ctrl.Result{}, err
		}
		gone, err := r.applicationPodsGone(ctx, kb, a)
		if err != nil {
			return ctrl.Result{}, err
		}
		stopped = stopped && gone
	}
	if !stopped {
		r.restoreProgress(kb, "waiting for the application's pods to stop")
		return next, nil
	}
	r.advance(kb, kcv1.RestoreArchivingWAL, "the application is stopped; waiting for the archive to hold the server's WAL")
	return next, nil
}

// restoreArchiveTail is step 3: before PostgreSQL stops, the archive must hold the WAL of
// the timeline the restore replaces up to the server's flush position, taken once, after
// the application stopped writing. Otherwise the old timeline's last transactions would
// depend on the sidecar's short drain at shutdown; a restore that cannot get them archived
// within spec.restore.timeout gives everything back (see restoreDeadline).
func (r *Reconciler) restoreArchiveTail(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, token := run.kb, run.db, run.token
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
		return r.restoreGiveBack(ctx, run, kcv1.ReasonWALNotArchived, "status.restore.flushLSN: "+err.Error()+
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

// restoreWaitForNewTimeline is step 7: PostgreSQL promoted past the replaced timeline and
// the sidecar archives on the new one.
func (r *Reconciler) restoreWaitForNewTimeline(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, token := run.kb, run.db, run.token
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
	if rs.BitnamiPerformRestore {
		// Promoted: the switch goes, before the application comes back (a pod of the
		// template without it starts; the next steps wait for its sidecar).
		if err := r.setPerformRestore(ctx, run, false); err != nil {
			return ctrl.Result{}, err
		}
	}
	if _, err := r.refreshWindow(ctx, kb, sc); err != nil {
		log.FromContext(ctx).Info("cannot read the catalog after the restore", "error", err.Error())
	}
	r.advance(kb, kcv1.RestoreCleaningKeycloak, fmt.Sprintf("PostgreSQL promoted to timeline %d and archives it; cleaning the Keycloak database", st.Timeline))
	return next, nil
}

// restoreCleanKeycloak is step 7: the restored database loses its stale cluster members
// and the sessions spec.restore.sessions names, before Keycloak starts on it.
func (r *Reconciler) restoreCleanKeycloak(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, token := run.kb, run.db, run.token
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
		UserSessionRows: res.UserSessionRows, ClientSessionRows: res.ClientSessionRows, AuthSessionRows: res.AuthSessionRows,
		KeycloakVersion: res.KeycloakVersion, Skipped: res.Skipped,
	}
	msg := fmt.Sprintf("cleaned Keycloak database %q (sessions %s): %d jgroups_ping rows, %d user sessions, %d client sessions and %d authentication sessions removed",
		res.Database, res.Sessions, res.JGroupsPingRows, res.UserSessionRows, res.ClientSessionRows, res.AuthSessionRows)
	if len(res.Skipped) > 0 {
		msg += "; skipped: " + strings.Join(res.Skipped, "; ")
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "KeycloakCleaned", "Restore", "%s", msg)
	r.advance(kb, kcv1.RestoreStartingApplication, msg+"; starting the application")
	return next, nil
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

// scaleApplicationsBack gives the application workloads their replicas from before the
// restore; one deleted meanwhile is skipped.
func (r *Reconciler) scaleApplicationsBack(ctx context.Context, kb *kcv1.KeycloakBackup) error {
	for _, a := range kb.Status.Restore.Applications {
		if err := r.setScale(ctx, kb, a, a.Replicas); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// restoreStopDatabase is step 4: PostgreSQL goes to zero, and its pods.
func (r *Reconciler) restoreStopDatabase(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	next := ctrl.Result{RequeueAfter: r.PollInterval}
	ok, err := r.scaleDown(ctx, run.kb, run.db)
	if err != nil || !ok {
		r.restoreProgress(run.kb, "waiting for the pods of "+run.db.String()+" to stop")
		return next, err
	}
	r.advance(run.kb, kcv1.RestoreRestoringData, "PostgreSQL is stopped; restoring the data directory")
	return next, nil
}

// restoreStartDatabase is step 6: PostgreSQL gets its replicas back, replays WAL to the
// target and promotes.
func (r *Reconciler) restoreStartDatabase(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	// A Bitnami image deletes recovery.signal at start unless told otherwise.
	if c := postgresContainer(run.db, run.loc); c != nil && isBitnami(c) && !run.kb.Status.Restore.BitnamiPerformRestore {
		if err := r.setPerformRestore(ctx, run, true); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := r.scale(ctx, run.kb, run.db, run.kb.Status.Restore.Database.Replicas); err != nil {
		return ctrl.Result{}, err
	}
	r.advance(run.kb, kcv1.RestoreWaitingForArchive, "PostgreSQL is starting; waiting for it to promote and archive on a new timeline")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// restoreFinish is step 9: the application gets its replicas back, and the restore ends.
func (r *Reconciler) restoreFinish(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb := run.kb
	if err := r.scaleApplicationsBack(ctx, kb); err != nil {
		return ctrl.Result{}, err
	}
	rs := kb.Status.Restore
	rs.Step = kcv1.RestoreDone
	rs.CompletionTime = ptrTime(r.Clock.Now())
	kb.Status.Phase = kcv1.PhaseRestored
	r.Metrics.restoreResult(kb.Namespace, kb.Name, false)
	msg := fmt.Sprintf("restored %s to %s; PostgreSQL runs on timeline %d", run.db, kb.Spec.RestoreTo, rs.Timeline)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonRestored, msg)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, kcv1.ReasonRestored, "Restore", "%s", msg)
	// Once more, to give the restore lock back.
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}
