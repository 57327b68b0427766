package controller_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// foreignJob creates a finished restore-looking Job that no KeycloakBackup owns, as a
// leftover of a deleted resource of the same name (its owner gone, orphaned) would be.
func (e *env) foreignJob(name string) *batchv1.Job {
	e.t.Helper()
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "restore", Image: "kcbackup"}},
		}}},
	}
	e.create(job)
	e.setJobCondition(name, true)
	if err := e.c.Get(e.ctx, client.ObjectKeyFromObject(job), job); err != nil {
		e.t.Fatal(err)
	}
	return job
}

// jobs lists the Jobs of the test's namespace as "name(uid)".
func (e *env) jobs() []string {
	e.t.Helper()
	var list batchv1.JobList
	if err := e.c.List(e.ctx, &list, client.InNamespace(e.ns)); err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, j := range list.Items {
		out = append(out, fmt.Sprintf("%s(%s)", j.Name, j.UID))
	}
	return out
}

func testLeftoverJobRefusedBeforeAnythingStops(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	leftover := e.foreignJob("pitr-restore")
	e.create(restoreResource("pitr", kcv1.RestoreLatest))
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreJobNotOwned)
	if msg := kb.Condition(kcv1.ConditionReady).Message; kb.Status.Phase != kcv1.PhaseFailed ||
		!strings.Contains(msg, "pitr-restore") || !strings.Contains(msg, "nothing was changed") {
		t.Errorf("status = %s; want Failed naming the Job and saying nothing was changed", describe(kb))
	}
	want := fmt.Sprintf("pitr-restore(%s)", leftover.UID)
	e.consistently("nothing stopped, the leftover Job neither taken nor replaced", time.Second, func() (bool, string) {
		p, k, jobs := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas, e.jobs()
		return p == 1 && k == 2 && len(jobs) == 1 && jobs[0] == want, fmt.Sprintf("postgres %d keycloak %d jobs %v", p, k, jobs)
	})
}

func testForeignJobAtRestoreStepIsNeverTheResult(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.create(restoreResource("pitr", kcv1.RestoreLatest))
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.waitReplicas("postgres", 0)
	// A Job of the same name, finished and not owned by the restore, appears before the
	// restore creates its own.
	e.foreignJob("pitr-restore")
	e.deletePods(dbPods)
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreJobNotOwned)
	if kb.Status.Phase != kcv1.PhaseFailed || kb.Status.Restore.JobUID != "" {
		t.Errorf("status = %s; want Failed with no Job recorded", describe(kb))
	}
	e.consistently("PostgreSQL stays stopped: the foreign Job may act on its volume", time.Second, func() (bool, string) {
		p, k := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas
		return p == 0 && k == 0 && len(e.jobs()) == 1, fmt.Sprintf("postgres %d keycloak %d jobs %v", p, k, e.jobs())
	})
}

func testDeletedRestoreJobIsNotRecreated(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.runToJob(restoreResource("pitr", kcv1.RestoreLatest))
	job := &batchv1.Job{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "pitr-restore"}, job); err != nil {
		t.Fatal(err)
	}
	e.eventually("the Job's UID recorded", func() (bool, string) {
		rs := e.kb("pitr").Status.Restore
		return rs.JobUID == job.UID, fmt.Sprintf("status.restore.jobUID %q, Job uid %q", rs.JobUID, job.UID)
	})
	// Someone deletes the Job (it may have finished and moved the data aside) before the
	// operator saw its outcome.
	if err := e.c.Delete(e.ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	e.poke("pitr")
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreJobLost)
	if msg := kb.Condition(kcv1.ConditionReady).Message; kb.Status.Phase != kcv1.PhaseFailed ||
		!strings.Contains(msg, string(job.UID)) || !strings.Contains(msg, "moved the data directory aside") || !strings.Contains(msg, "postgres-data") {
		t.Errorf("status = %s; want Failed naming the Job, the claim and the moved-aside risk", describe(kb))
	}
	e.poke("pitr")
	e.consistently("no second restore Job, everything stays stopped", time.Second, func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "pitr-restore"}, &batchv1.Job{})
		p, k := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas
		return apierrors.IsNotFound(err) && p == 0 && k == 0, fmt.Sprintf("get Job: %v; postgres %d keycloak %d", err, p, k)
	})
}

func testDatabaseStopsOnlyOnceItsWALIsArchived(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.sidecar.with(func(f *fakeSidecar) { f.status.ServerFlushLSN, f.status.ArchivedLSN = "0/5000000", "0/4000000" })
	e.create(restoreResource("pitr", kcv1.RestoreLatest))
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.eventually("step ArchivingWAL with the flush position taken", func() (bool, string) {
		rs := e.kb("pitr").Status.Restore
		return rs.Step == kcv1.RestoreArchivingWAL && rs.FlushLSN == "0/5000000", describe(e.kb("pitr"))
	})
	e.consistently("PostgreSQL runs while the archive is behind its flush position", time.Second, func() (bool, string) {
		p := *e.deployment("postgres").Spec.Replicas
		return p == 1, fmt.Sprintf("postgres %d; %s", p, describe(e.kb("pitr")))
	})
	// The server moves on (a checkpoint, a WAL switch): the archive needs to reach only the
	// position taken once, not chase the server.
	e.sidecar.with(func(f *fakeSidecar) { f.status.ServerFlushLSN, f.status.ArchivedLSN = "0/6000000", "0/5000000" })
	e.waitReplicas("postgres", 0)
	if rs := e.kb("pitr").Status.Restore; rs.FlushLSN != "0/5000000" {
		t.Errorf("status.restore.flushLSN = %q, want the first position taken, 0/5000000", rs.FlushLSN)
	}
}

func testArchiveThatNeverCatchesUpGivesBack(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.sidecar.with(func(f *fakeSidecar) { f.status.ServerFlushLSN, f.status.ArchivedLSN = "0/5000000", "0/4000000" })
	kb := restoreResource("pitr", kcv1.RestoreLatest)
	kb.Spec.Restore = &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: 10 * time.Minute}}
	e.create(kb)
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.eventually("step ArchivingWAL with the flush position taken", func() (bool, string) {
		rs := e.kb("pitr").Status.Restore
		return rs.Step == kcv1.RestoreArchivingWAL && rs.FlushLSN == "0/5000000", describe(e.kb("pitr"))
	})
	e.clock.Step(11 * time.Minute)
	e.poke("pitr")
	got := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonWALNotArchived)
	if msg := got.Condition(kcv1.ConditionReady).Message; got.Status.Phase != kcv1.PhaseFailed ||
		!strings.Contains(msg, "0/5000000") || !strings.Contains(msg, "10m0s") || !strings.Contains(msg, "PostgreSQL was not stopped") {
		t.Errorf("status = %s; want Failed naming the flush position, the timeout and that PostgreSQL was not stopped", describe(got))
	}
	e.waitReplicas("keycloak", 2)
	if p := *e.deployment("postgres").Spec.Replicas; p != 1 {
		t.Errorf("postgres at %d replicas; it must never have been stopped", p)
	}
	if len(e.jobs()) != 0 {
		t.Errorf("jobs %v; want none", e.jobs())
	}
}

// edgeFixture is a restore fixture whose archive ends now and lags by 30 s.
func edgeFixture(t *testing.T, cfg *rest.Config) (*env, time.Time) {
	e := restoreFixture(t, cfg)
	end := e.clock.Now().UTC().Truncate(time.Second)
	e.sidecar.with(func(f *fakeSidecar) { f.window.Latest = end; f.status.ArchiveLagSeconds = 30 })
	return e, end
}

func testTargetJustPastTheWindowIsWaitedFor(t *testing.T, cfg *rest.Config) {
	e, end := edgeFixture(t, cfg)
	target := end.Add(20 * time.Second)
	// The store fails at first: a transient refusal, retried.
	e.sidecar.with(func(f *fakeSidecar) { f.catalogDown = true })
	e.create(restoreResource("pitr", target.Format(time.RFC3339)))
	e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonArchiveUnreadable)
	e.sidecar.with(func(f *fakeSidecar) { f.catalogDown = false })
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonTargetNotYetArchived)
	if msg := kb.Condition(kcv1.ConditionReady).Message; !strings.Contains(msg, "20s past") || !strings.Contains(msg, "30s") {
		t.Errorf("Ready = %q; want how far past the end the target is and the lag", msg)
	}
	e.consistently("waiting, nothing stopped", time.Second, func() (bool, string) {
		kb := e.kb("pitr")
		k := *e.deployment("keycloak").Spec.Replicas
		return kb.Status.Phase != kcv1.PhaseFailed && k == 2, fmt.Sprintf("keycloak %d; %s", k, describe(kb))
	})
	// The archive catches up: the window reaches the target, and the restore goes on.
	e.sidecar.with(func(f *fakeSidecar) { f.window.Latest = target.Add(time.Second) })
	e.waitReplicas("keycloak", 0)
	if rs := e.kb("pitr").Status.Restore; rs.TargetTime == nil || !rs.TargetTime.Time.Equal(target) {
		t.Errorf("status.restore.targetTime = %v, want %s", rs.TargetTime, target)
	}
}

func testTargetPastTheWindowIsRefusedOnceTheLagHasPassed(t *testing.T, cfg *rest.Config) {
	e, end := edgeFixture(t, cfg)
	e.create(restoreResource("pitr", end.Add(20*time.Second).Format(time.RFC3339)))
	e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonTargetNotYetArchived)
	// The archive never gets there: once the lag and the margin have passed, it is refused.
	e.clock.Step(2 * time.Minute)
	e.poke("pitr")
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonTargetOutsideWindow)
	if kb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(kb.Condition(kcv1.ConditionReady).Message, "nothing was changed") {
		t.Errorf("status = %s; want Failed saying nothing was changed", describe(kb))
	}
	if k := *e.deployment("keycloak").Spec.Replicas; k != 2 {
		t.Errorf("keycloak at %d replicas, want 2", k)
	}
}

// What the restore Job's planner would refuse is refused before anything stops: the
// operator asks the sidecar's planner for a dry run with the target and timeline the Job
// will use. A store the planner cannot read is waited for; a refusal fails the restore
// with the planner's words.
func testPlannerRefusalStopsNothing(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	refusal := "restore target latest: the target time lies on more than one timeline: timeline 2 branched from timeline 1 " +
		"while timeline 1 was still being archived; pass --timeline 1 for timeline 1's history, or --timeline 2 for timeline 2's"
	e.sidecar.with(func(f *fakeSidecar) { f.planDown = true })
	kb := restoreResource("latest", "latest")
	timeline := int64(2)
	kb.Spec.Restore = &kcv1.RestoreOptions{Timeline: &timeline}
	e.create(kb)
	e.waitCondition("latest", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonArchiveUnreadable)
	e.sidecar.with(func(f *fakeSidecar) { f.planDown = false; f.planRefusal = refusal })
	got := e.waitCondition("latest", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestorePlanRefused)
	if msg := got.Condition(kcv1.ConditionReady).Message; got.Status.Phase != kcv1.PhaseFailed ||
		!strings.Contains(msg, "pass --timeline 1") || !strings.Contains(msg, "nothing was changed") {
		t.Errorf("status = %s; want Failed with the planner's words and that nothing was changed", describe(got))
	}
	e.sidecar.with(func(f *fakeSidecar) {
		if len(f.plans) < 2 || f.plans[len(f.plans)-1] != (apiclient.RestorePlanRequest{Target: "latest", Timeline: 2}) {
			t.Errorf("plan requests %+v; want the Job's target and timeline (latest, 2)", f.plans)
		}
	})
	if k := *e.deployment("keycloak").Spec.Replicas; k != 2 {
		t.Errorf("keycloak at %d replicas, want 2: nothing may stop before the plan is accepted", k)
	}
	if p := *e.deployment("postgres").Spec.Replicas; p != 1 {
		t.Errorf("postgres at %d replicas, want 1", p)
	}
	if len(e.jobs()) != 0 {
		t.Errorf("jobs %v; want none", e.jobs())
	}
}
