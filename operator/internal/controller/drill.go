package controller

// Restore drills. A drill is a restore into a new instance (clone.go) whose target is a
// transaction it writes in production: one transaction takes SHARE locks on the checked
// tables (so no write to them commits meanwhile), counts their rows and takes a
// transaction ID. Restored to exactly that transaction's commit (the planner finds its
// commit record in the archive), the instance must show the same counts: a drill proves
// the archive restores the data, not only that PostgreSQL starts. RTO is the time from the
// drill's start to a promoted, checked instance; RPO the time from the marker's commit
// until the operator saw the archive hold it.
//
// A drill schedule (spec.drill on the archive's resource) creates one drill resource per
// tick (kcv1.NewDrill), owned by it, keeps spec.drill.history of them and sums them up in
// status.drill and the kcbackup_operator_drill_* metrics.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// Reasons of drills.
const (
	// ReasonDrillPassed: every check of the drill passed (or was skipped, as listed).
	ReasonDrillPassed = "DrillPassed"
	// ReasonDrillFailed: a check failed, or the restore did; the message names it.
	ReasonDrillFailed = "DrillFailed"
	// ReasonDrillStarted: a drill schedule created a drill.
	ReasonDrillStarted = "DrillStarted"
)

// checksTimeout bounds the checks of a drill's instance (amcheck reads every index).
const checksTimeout = 15 * time.Minute

// errNothingToCount: none of the checked tables exists.
var errNothingToCount = errors.New("none of the checked tables exists")

// maxMarkAttempts is how many times the marker may meet a lock timeout before the drill
// fails: each attempt may hold writes to the tables it locked until then.
const maxMarkAttempts = 3

// markerStatementTimeout bounds each statement of the marker (a count holds the writes to
// its table).
const markerStatementTimeout = "60s"

// markerLockTimeout bounds the wait for each SHARE lock of the marker: a long write to a
// checked table makes the drill wait for it at most this long (and, meanwhile, queues the
// writes behind it), then it tries again.
const markerLockTimeout = "5s"

// drillOf returns the drill's result record, made on first use.
func drillOf(kb *kcv1.KeycloakBackup) *kcv1.DrillResult {
	rs := kb.Status.Restore
	if rs.Drill == nil {
		rs.Drill = &kcv1.DrillResult{}
	}
	return rs.Drill
}

// drillTarget is the restore Job's --to for a drill: the marker's commit.
func drillTarget(d *kcv1.DrillResult) string { return "xid:" + d.MarkerXID + "@" + d.MarkerStartLSN }

// restoreJobTarget is the restore Job's --to: restoreTo, or a drill's marker.
func restoreJobTarget(kb *kcv1.KeycloakBackup) string {
	if kb.IsDrill() && kb.Status.Restore != nil && kb.Status.Restore.Drill != nil && kb.Status.Restore.Drill.MarkerXID != "" {
		return drillTarget(kb.Status.Restore.Drill)
	}
	return kb.Spec.RestoreTo
}

// primaryPod returns the running pod of db whose PostgreSQL is not in recovery.
func (r *Reconciler) primaryPod(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) (*corev1.Pod, error) {
	pods, err := db.pods(ctx, r.Client)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, p := range runningPods(pods) {
		conn, err := r.connectPostgres(ctx, kb, p, "postgres")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var standby bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby)
		conn.Close(context.WithoutCancel(ctx))
		if err == nil && !standby {
			return p, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no running pod of %s has a primary PostgreSQL answering: %w", db, errors.Join(errs...))
}

// drillMark is step 2 of a drill: the marker transaction in production.
func (r *Reconciler) drillMark(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db := run.kb, run.db
	retry := ctrl.Result{RequeueAfter: r.PollInterval}
	pod, err := r.primaryPod(ctx, kb, db)
	if err != nil {
		r.restoreProgress(kb, "waiting to mark production: "+err.Error())
		return retry, nil
	}
	check := kb.Spec.Into.Check
	conn, err := r.connectPostgres(ctx, kb, pod, check.CheckDatabase())
	if err != nil {
		r.restoreProgress(kb, "waiting to mark production: "+err.Error())
		return retry, nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	d := drillOf(kb)
	m, err := markSource(ctx, conn, check.CheckTables())
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42501" || pe.Code == "42P01") { // insufficient_privilege, undefined_table
		user := orDefault(kb.Spec.Postgres.User, "postgres")
		return r.cloneFailed(ctx, run, ReasonDrillFailed, fmt.Sprintf("marking production in database %s as %s: %v; the drill's marker "+
			"locks each checked table IN SHARE MODE and counts it, which needs SELECT and UPDATE (or DELETE, TRUNCATE) on it: "+
			"GRANT SELECT, UPDATE ON <table> TO %s, or leave the table out of spec.drill.check.tables", check.CheckDatabase(), user, err, user))
	}
	if errors.Is(err, errNothingToCount) {
		return r.cloneFailed(ctx, run, ReasonDrillFailed, fmt.Sprintf("none of the checked tables (%s) exists in database %s of production: "+
			"a drill that counts nothing proves no data; set spec.drill.check.database and tables (schema-qualified where not on the search_path)",
			strings.Join(check.CheckTables(), ", "), check.CheckDatabase()))
	}
	if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available: a write held a table past lock_timeout
		d.MarkAttempts++
		if d.MarkAttempts >= maxMarkAttempts {
			return r.cloneFailed(ctx, run, ReasonDrillFailed, fmt.Sprintf("could not lock the checked tables IN SHARE MODE within %s, %d times (%v): "+
				"a long-running write holds one (see pg_stat_activity); the drill gave up rather than hold production's writes again", markerLockTimeout, d.MarkAttempts, err))
		}
		r.restoreProgress(kb, fmt.Sprintf("a running write held a checked table past %s (attempt %d of %d), trying again: %v", markerLockTimeout, d.MarkAttempts, maxMarkAttempts, err))
		return retry, nil
	}
	if err != nil {
		r.restoreProgress(kb, "cannot mark production yet, retrying: "+err.Error())
		return retry, nil
	}
	now := r.Clock.Now()
	d.MarkerXID, d.MarkerStartLSN, d.MarkerLSN, d.MarkerTime = m.xid, m.startLSN, m.endLSN, ptrTime(now)
	d.Counts, d.Skipped = m.counts, m.skipped
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "DrillMarked", "Drill",
		"marked production (pod %s, database %s): transaction %s committed before %s, counting %s; skipped (not in production): %s",
		pod.Name, check.CheckDatabase(), m.xid, m.endLSN, describeCounts(m.counts, false), orDefault(strings.Join(m.skipped, ", "), "none"))
	r.advance(kb, kcv1.RestoreArchivingWAL, "waiting for the archive to hold the marker transaction "+m.xid)
	return ctrl.Result{RequeueAfter: time.Millisecond}, nil
}

// marker is what the marker transaction saw.
type marker struct {
	xid, startLSN, endLSN string
	counts                []kcv1.TableCount
	skipped               []string
}

// markSource runs the marker transaction on conn: SHARE locks on the tables that exist (no
// write to them can commit until it ends), their counts, and a transaction ID, committed.
// startLSN is taken before anything, so the commit record lies after it; endLSN (the
// insert position) after the commit, so the archive holds the commit once it reaches endLSN.
func markSource(ctx context.Context, conn *pgx.Conn, tables []string) (marker, error) {
	var m marker
	tx, err := conn.Begin(ctx)
	if err != nil {
		return m, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit, a no-op
	// Writes to a locked table wait while it is counted: bounded, as is each lock's wait.
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+markerLockTimeout+"'; SET LOCAL statement_timeout = '"+markerStatementTimeout+"'"); err != nil {
		return m, err
	}
	if err := tx.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&m.startLSN); err != nil {
		return m, err
	}
	for _, t := range tables {
		ident := pgx.Identifier(strings.Split(t, ".")).Sanitize()
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", ident).Scan(&exists); err != nil {
			return m, err
		}
		if !exists {
			m.skipped = append(m.skipped, t)
			continue
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE "+ident+" IN SHARE MODE"); err != nil {
			return m, fmt.Errorf("LOCK TABLE %s IN SHARE MODE: %w", t, err)
		}
		var n int64
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&n); err != nil {
			return m, fmt.Errorf("count %s: %w", t, err)
		}
		m.counts = append(m.counts, kcv1.TableCount{Table: t, Source: n})
	}
	if len(m.counts) == 0 {
		return m, errNothingToCount // rolled back: nothing marked
	}
	if err := tx.QueryRow(ctx, "SELECT txid_current()::text").Scan(&m.xid); err != nil {
		return m, err
	}
	if err := tx.Commit(ctx); err != nil {
		return m, fmt.Errorf("commit the marker: %w", err)
	}
	// The insert position, not pg_current_wal_lsn() (the write position): a transaction
	// that wrote no WAL of its own (LOCK, count, txid_current) commits asynchronously, so
	// its commit record may not be written yet; seen on a real cluster, where the write
	// position equalled startLSN and the archive "held the marker" without its commit.
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&m.endLSN)
	return m, err
}

// describeCounts lists counts as "realm 3, client 12" (with the restored ones when asked).
func describeCounts(counts []kcv1.TableCount, restored bool) string {
	var out []string
	for _, c := range counts {
		s := fmt.Sprintf("%s %d", c.Table, c.Source)
		if restored && c.Restored != nil {
			s = fmt.Sprintf("%s %d/%d", c.Table, c.Source, *c.Restored)
		}
		out = append(out, s)
	}
	return orDefault(strings.Join(out, ", "), "no table")
}

// archiveWatchFor bounds how long one reconcile watches the archive reach the marker (every
// 50 ms, so that the RPO measured is not rounded up to the poll interval); then the step
// comes back at once, leaving the worker to other resources meanwhile.
const archiveWatchFor = 2 * time.Second

// drillWaitArchived is step 3 of a drill: the archive holds the marker; the planner is
// asked to restore to its commit.
func (r *Reconciler) drillWaitArchived(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, token := run.kb, run.db, run.token
	retry := ctrl.Result{RequeueAfter: r.PollInterval}
	d := drillOf(kb)
	want, err := parseLSN(d.MarkerLSN)
	if err != nil {
		return r.cloneFailed(ctx, run, ReasonDrillFailed, "status.restore.drill.markerLSN: "+err.Error())
	}
	sc, ok, err := r.sidecarClient(ctx, kb, db, token)
	if err != nil || !ok {
		r.restoreProgress(kb, "waiting for a running pod of "+db.String()+" to see the archive reach the marker")
		return retry, err
	}
	if d.ArchivedTime == nil {
		until := time.Now().Add(archiveWatchFor)
		var st apiclient.Status
		for {
			var ok bool
			st, ok = r.sidecarStatus(ctx, kb, sc)
			if got, err := parseLSN(st.ArchivedLSN); ok && err == nil && got >= want {
				break
			}
			if time.Now().After(until) {
				r.restoreProgress(kb, fmt.Sprintf("waiting for the archive to hold the marker (WAL up to %s; archived up to %s)", d.MarkerLSN, orDefault(st.ArchivedLSN, "nothing yet")))
				return ctrl.Result{RequeueAfter: 50 * time.Millisecond}, nil
			}
			select {
			case <-ctx.Done():
				return ctrl.Result{}, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		now := r.Clock.Now()
		d.ArchivedTime = ptrTime(now)
		d.RPO = &metav1.Duration{Duration: max(now.Sub(d.MarkerTime.Time), 0).Round(time.Millisecond)}
		// The instance must promote past production's timeline: one that does not did not
		// recover (clone.go, cloneStart).
		kb.Status.Restore.PreviousTimeline = int64(st.Timeline)
	}
	plan, err := sc.PlanRestore(ctx, apiclient.RestorePlanRequest{Target: drillTarget(d)})
	var refused *apiclient.PlanRefusedError
	switch {
	case errors.As(err, &refused):
		return r.cloneFailed(ctx, run, kcv1.ReasonRestorePlanRefused, "the restore planner refuses the marker "+drillTarget(d)+": "+refused.Message)
	case errors.Is(err, apiclient.ErrNotFound):
		return r.cloneFailed(ctx, run, kcv1.ReasonRestorePlanRefused, "the sidecar of this release cannot plan a restore to a transaction (no /v1/restore-plan): "+
			"let its upgrade through (kcbackup.keycloak.org/hold-sidecar-upgrade: \"false\" on the workload) before drilling")
	case err != nil:
		r.restoreProgress(kb, "cannot plan the restore to the marker yet, retrying: "+err.Error())
		return retry, nil
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "RestorePlanned", "Restore",
		"the archive holds the marker %s (seen %s after its commit); restoring backup %s, timeline %d, to its commit",
		d.MarkerXID, d.RPO.Duration, plan.BackupID, plan.Timeline)
	r.advance(kb, kcv1.RestoreCreatingInstance, "the archive holds the marker; creating the drill's instance")
	return ctrl.Result{RequeueAfter: time.Millisecond}, nil
}

// drillCheck is step 7 of a drill: the checks on the promoted instance.
func (r *Reconciler) drillCheck(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb := run.kb
	rs := kb.Status.Restore
	d := drillOf(kb)
	var pod corev1.Pod
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namesOf(kb).ns, Name: namesOf(kb).sts + "-0"}, &pod); err != nil {
		return ctrl.Result{}, err
	}
	if pod.Labels[instanceUIDLabel] != string(kb.UID) {
		return r.cloneFailed(ctx, run, ReasonDrillFailed, "pod "+pod.Name+" is not this drill's instance")
	}
	ctx, cancel := context.WithTimeout(ctx, checksTimeout)
	defer cancel()
	check := kb.Spec.Into.Check
	conn, err := r.connectPostgres(ctx, kb, &pod, check.CheckDatabase())
	if err != nil {
		r.restoreProgress(kb, "waiting to check the instance: "+err.Error())
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	inst := rs.Instance
	d.Checks = []kcv1.DrillCheckResult{{Name: "promoted", Result: kcv1.CheckPassed,
		Message: fmt.Sprintf("PostgreSQL recovered and promoted to timeline %d, after production's %d", inst.Timeline, rs.PreviousTimeline)}}
	d.Checks = append(d.Checks, checkMarker(ctx, conn, d.MarkerXID), checkCounts(ctx, conn, d), checkAmcheck(ctx, conn, d.Counts))
	now := r.Clock.Now()
	// From the archive holding the target to a promoted, checked copy: what a restore of
	// production would take (the marker and the archive's lag are the RPO's).
	d.RTO = &metav1.Duration{Duration: now.Sub(d.ArchivedTime.Time).Round(time.Second)}
	r.advance(kb, kcv1.RestoreRemovingInstance, "checked; removing the drill's instance")
	return ctrl.Result{RequeueAfter: time.Millisecond}, nil
}

// checkMarker: the marker transaction committed in the instance.
func checkMarker(ctx context.Context, conn *pgx.Conn, xid string) kcv1.DrillCheckResult {
	c := kcv1.DrillCheckResult{Name: "marker"}
	var status *string
	if err := conn.QueryRow(ctx, "SELECT txid_status($1::bigint)", xid).Scan(&status); err != nil {
		c.Result, c.Message = kcv1.CheckFailed, "txid_status("+xid+"): "+err.Error()
		return c
	}
	if status == nil || *status != "committed" {
		c.Result, c.Message = kcv1.CheckFailed, fmt.Sprintf("the marker transaction %s is %s in the instance, not committed: recovery did not reach it", xid, orDefault(ptrString(status), "unknown"))
		return c
	}
	c.Result, c.Message = kcv1.CheckPassed, "the marker transaction "+xid+" is committed in the instance"
	return c
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// checkCounts: every counted table has the count production had under the marker's locks.
func checkCounts(ctx context.Context, conn *pgx.Conn, d *kcv1.DrillResult) kcv1.DrillCheckResult {
	c := kcv1.DrillCheckResult{Name: "counts"}
	if len(d.Counts) == 0 {
		c.Result, c.Message = kcv1.CheckSkipped, "no checked table exists in production (skipped: "+strings.Join(d.Skipped, ", ")+")"
		return c
	}
	var diffs []string
	for i := range d.Counts {
		t := &d.Counts[i]
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier(strings.Split(t.Table, ".")).Sanitize()).Scan(&n); err != nil {
			diffs = append(diffs, fmt.Sprintf("%s: %v", t.Table, err))
			continue
		}
		t.Restored = &n
		if n != t.Source {
			diffs = append(diffs, fmt.Sprintf("%s has %d rows, production had %d at the marker", t.Table, n, t.Source))
		}
	}
	if len(diffs) > 0 {
		c.Result, c.Message = kcv1.CheckFailed, strings.Join(diffs, "; ")
		return c
	}
	c.Result, c.Message = kcv1.CheckPassed, "equal row counts: "+describeCounts(d.Counts, false)
	return c
}

// checkAmcheck runs amcheck's bt_index_check on every B-tree index of the counted tables.
// Without the extension, it is created in the instance (a throw-away copy) when the role
// may; otherwise the check is skipped, saying how to enable it.
func checkAmcheck(ctx context.Context, conn *pgx.Conn, counts []kcv1.TableCount) kcv1.DrillCheckResult {
	c := kcv1.DrillCheckResult{Name: "amcheck"}
	if len(counts) == 0 {
		c.Result, c.Message = kcv1.CheckSkipped, "no table to check"
		return c
	}
	var have bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck')").Scan(&have); err != nil {
		c.Result, c.Message = kcv1.CheckFailed, err.Error()
		return c
	}
	if !have {
		// synchronous_commit local: the copy has no synchronous standby, whatever
		// synchronous_standby_names it inherited.
		_, err := conn.Exec(ctx, "SET synchronous_commit = local; CREATE EXTENSION IF NOT EXISTS amcheck")
		if err != nil {
			c.Result, c.Message = kcv1.CheckSkipped, "amcheck is not installed and cannot be created here ("+err.Error()+
				"): CREATE EXTENSION amcheck in production once (the copies inherit it) and GRANT EXECUTE ON FUNCTION bt_index_check(regclass) to spec.postgres.user"
			return c
		}
	}
	var tables []string
	for _, t := range counts {
		tables = append(tables, pgx.Identifier(strings.Split(t.Table, ".")).Sanitize())
	}
	rows, err := conn.Query(ctx, `SELECT i.indexrelid::regclass::text FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
		WHERE am.amname = 'btree' AND i.indrelid = ANY ($1::regclass[]) ORDER BY 1`, tables)
	if err != nil {
		c.Result, c.Message = kcv1.CheckFailed, "list the tables' indexes: "+err.Error()
		return c
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		c.Result, c.Message = kcv1.CheckFailed, "list the tables' indexes: "+err.Error()
		return c
	}
	var bad []string
	for _, idx := range indexes {
		if _, err := conn.Exec(ctx, "SELECT bt_index_check($1::regclass)", idx); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42501" {
				c.Result, c.Message = kcv1.CheckSkipped, "bt_index_check: "+err.Error()+": GRANT EXECUTE ON FUNCTION bt_index_check(regclass) to spec.postgres.user in production"
				return c
			}
			bad = append(bad, idx+": "+err.Error())
		}
	}
	if len(bad) > 0 {
		c.Result, c.Message = kcv1.CheckFailed, strings.Join(bad, "; ")
		return c
	}
	c.Result, c.Message = kcv1.CheckPassed, fmt.Sprintf("bt_index_check found no corruption in %d B-tree indexes", len(indexes))
	return c
}

// drillRemove is step 8 of a drill: the instance goes, then the drill's result is final.
func (r *Reconciler) drillRemove(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb := run.kb
	rs := kb.Status.Restore
	gone, err := r.deleteInstance(ctx, kb)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !gone {
		r.restoreProgress(kb, "waiting for the drill's instance to be deleted")
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	if rs.Instance != nil {
		rs.Instance.Removed = true
	}
	d := drillOf(kb)
	var failed, skipped []string
	for _, c := range d.Checks {
		switch c.Result {
		case kcv1.CheckFailed:
			failed = append(failed, c.Name+": "+c.Message)
		case kcv1.CheckSkipped:
			skipped = append(skipped, c.Name+" ("+c.Message+")")
		}
	}
	rs.Step, rs.CompletionTime = kcv1.RestoreDone, ptrTime(r.Clock.Now())
	passed := len(failed) == 0
	if !passed {
		msg := "the drill failed: " + strings.Join(failed, "; ") + "; its instance was removed, production was not touched"
		kb.Status.Phase = kcv1.PhaseFailed
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, ReasonDrillFailed, msg)
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, ReasonDrillFailed, "Drill", "%s", msg)
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	msg := fmt.Sprintf("the drill passed: restored to the marker %s in %s (RTO), the archive held it %s after its commit (RPO); %s",
		d.MarkerXID, d.RTO.Duration, d.RPO.Duration, describeCounts(d.Counts, true))
	if len(skipped) > 0 {
		msg += "; skipped: " + strings.Join(skipped, "; ")
	}
	kb.Status.Phase = kcv1.PhaseRestored
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, ReasonDrillPassed, msg)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, ReasonDrillPassed, "Drill", "%s", msg)
	return ctrl.Result{}, nil
}

// drillRemoveTimedOut ends a drill whose instance could not be deleted.
func (r *Reconciler) drillRemoveTimedOut(_ context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	n := namesOf(run.kb)
	return r.restoreFailed(run.kb, ReasonDrillFailed, what+fmt.Sprintf("; the drill's instance could not be deleted: delete StatefulSet %s, Service %s, "+
		"claim %s and Secret %s yourself (kubectl delete sts,svc,pvc,secret -l %s=%s)", n.sts, n.svc, n.claim, n.secret, InstanceLabel, run.kb.Name))
}

// reconcileDrills runs spec.drill of an archive's resource: it sums up its drills in
// status.drill, keeps spec.drill.history of them, and creates one at each tick (at most one
// for the ticks missed, never while one runs). It returns when to look again.
func (r *Reconciler) reconcileDrills(ctx context.Context, kb *kcv1.KeycloakBackup) (time.Duration, error) {
	d := kb.Spec.Drill
	if d == nil {
		kb.Status.Drill = nil
		return 0, nil
	}
	sched, err := kcv1.ParseSchedule(d.Schedule)
	if err != nil { // Validate has parsed it already.
		return 0, err
	}
	now := r.Clock.Now()
	next := sched.Next(now)
	if kb.Status.Drill == nil {
		kb.Status.Drill = &kcv1.DrillStatus{}
	}
	ds := kb.Status.Drill
	ds.NextScheduleTime = ptrTime(next)
	var list kcv1.KeycloakBackupList
	if err := r.Client.List(ctx, &list, client.InNamespace(kb.Namespace), client.MatchingLabels{kcv1.DrillOfLabel: kb.Name}); err != nil {
		return 0, fmt.Errorf("list the drills of %s: %w", kb.Name, err)
	}
	drills := list.Items
	sort.Slice(drills, func(i, j int) bool { return drills[i].Name < drills[j].Name }) // <archive>-drill-<time>: oldest first
	running := false
	var finished []*kcv1.KeycloakBackup
	for i := range drills {
		x := &drills[i]
		if x.Spec.From != kb.Name || !x.IsDrill() {
			continue
		}
		if !x.IsTerminal() {
			running = true
			continue
		}
		finished = append(finished, x)
	}
	summarizeDrills(ds, finished)
	r.Metrics.seedDrills(kb, now)
	keep := int(d.History)
	if keep == 0 {
		keep = kcv1.DefaultDrillHistory
	}
	for i := 0; i < len(finished)-keep; i++ {
		if old := finished[i]; metav1.IsControlledBy(old, kb) {
			if err := r.Client.Delete(ctx, old); err != nil && !apierrors.IsNotFound(err) {
				return 0, fmt.Errorf("delete the old drill %s: %w", old.Name, err)
			}
		}
	}
	wait := next.Sub(now)
	if running {
		return min(wait, r.PollInterval), nil
	}
	if d.Suspend {
		ds.NextScheduleTime = nil
		return 0, nil
	}
	last := kb.CreationTimestamp.Time
	if ds.LastScheduleTime != nil {
		last = ds.LastScheduleTime.Time
	}
	due, ok := latestTickBetween(sched, last, now)
	if !ok {
		return wait, nil
	}
	drill := kcv1.NewDrill(kb, due)
	if err := controllerutil.SetControllerReference(kb, drill, r.Client.Scheme()); err != nil {
		return 0, err
	}
	if err := r.Client.Create(ctx, drill); err != nil && !apierrors.IsAlreadyExists(err) {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, ReasonDrillFailed, "Drill", "cannot create the drill %s: %v", drill.Name, err)
		return r.RetryInterval, nil
	}
	ds.LastScheduleTime, ds.LastDrill = ptrTime(due), drill.Name
	r.Recorder.Eventf(kb, drill, corev1.EventTypeNormal, ReasonDrillStarted, "Drill",
		"drill %s started for the tick %s: it restores the archive into a throw-away instance %s", drill.Name, due.UTC().Format(time.RFC3339), drill.Spec.Into.Name)
	return r.PollInterval, nil
}

// summarizeDrills writes the newest finished drill's outcome, and the newest passed
// one's figures, into ds; what older drills said stays when they were deleted.
func summarizeDrills(ds *kcv1.DrillStatus, finished []*kcv1.KeycloakBackup) {
	for _, x := range finished {
		rs := x.Status.Restore
		if rs == nil || rs.CompletionTime == nil {
			continue
		}
		if ds.LastCompletionTime == nil || !rs.CompletionTime.Before(ds.LastCompletionTime) {
			ds.LastCompletionTime, ds.LastResult, ds.LastDrill = rs.CompletionTime.DeepCopy(), x.Status.Phase, x.Name
			if c := x.Condition(kcv1.ConditionReady); c != nil {
				ds.LastMessage = c.Message
			}
		}
		if x.Status.Phase == kcv1.PhaseRestored && rs.Drill != nil &&
			(ds.LastSuccessTime == nil || !rs.CompletionTime.Before(ds.LastSuccessTime)) {
			ds.LastSuccessTime, ds.LastRTO, ds.LastRPO = rs.CompletionTime.DeepCopy(), rs.Drill.RTO.DeepCopy(), rs.Drill.RPO.DeepCopy()
		}
	}
}
