package controller_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// runToJob creates the restore and plays the controllers until its Job exists.
func (e *env) runToJob(kb *kcv1.KeycloakBackup) {
	e.t.Helper()
	e.create(kb)
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.waitReplicas("postgres", 0)
	e.deletePods(dbPods)
	e.eventually("restore Job", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: kb.Name + "-restore"}, &batchv1.Job{})
		return err == nil, fmt.Sprint(err)
	})
}

// runToWaitingForArchive goes on until PostgreSQL runs restored and the operator waits for
// the new timeline.
func (e *env) runToWaitingForArchive(kb *kcv1.KeycloakBackup) {
	e.t.Helper()
	e.runToJob(kb)
	e.setJobCondition(kb.Name+"-restore", true)
	e.waitReplicas("postgres", 1)
	e.runPod("postgres-1", dbPods)
	e.eventually("step WaitingForArchive", func() (bool, string) {
		rs := e.kb(kb.Name).Status.Restore
		return rs != nil && rs.Step == kcv1.RestoreWaitingForArchive, describe(e.kb(kb.Name))
	})
}

func (e *env) readyReason(name string) string {
	c := e.kb(name).Condition(kcv1.ConditionReady)
	if c == nil {
		return ""
	}
	return c.Reason
}

func testTwoRestores(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	sched := volumeBackup("hourly")
	sched.Spec.Schedule = "0 * * * *"
	e.create(sched)
	e.waitPhase("hourly", kcv1.PhaseScheduled)

	// Two restores of one workload at once, same archive, same target.
	target := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	// The fake clock jumps to the next tick below: the deadline must not pass meanwhile.
	for _, name := range []string{"first", "second"} {
		kb := restoreResource(name, target)
		kb.Spec.Restore = &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: 3 * time.Hour}}
		e.create(kb)
	}
	var winner, loser string
	e.eventually("one restore refused", func() (bool, string) {
		for _, n := range [][2]string{{"first", "second"}, {"second", "first"}} {
			if e.readyReason(n[1]) == kcv1.ReasonRestoreConflict {
				winner, loser = n[0], n[1]
				return true, ""
			}
		}
		return false, e.readyReason("first") + " / " + e.readyReason("second")
	})
	lkb := e.kb(loser)
	if lkb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(lkb.Condition(kcv1.ConditionReady).Message, winner) {
		t.Errorf("refused restore %s: %s; want Failed naming %s", loser, describe(lkb), winner)
	}
	e.waitEvent(loser, kcv1.ReasonRestoreConflict)
	if v := e.deployment("postgres").Annotations[kccontroller.RestoreLockAnnotation]; !strings.HasPrefix(v, winner+"/") {
		t.Errorf("restore lock = %q, want held by %s", v, winner)
	}

	// The schedule pauses while the restore holds the workload: its tick passes, no backup.
	e.waitCondition("hourly", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonPausedForRestore)
	e.clock.SetTime(e.kb("hourly").Status.NextScheduleTime.Add(time.Second))
	e.poke("hourly")
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.waitReplicas("postgres", 0)
	e.deletePods(dbPods)
	e.eventually("the winner's Job", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: winner + "-restore"}, &batchv1.Job{})
		return err == nil, fmt.Sprint(err)
	})
	e.consistently("one Job, no backup, while the restore runs", time.Second, func() (bool, string) {
		var jobs batchv1.JobList
		_ = e.c.List(e.ctx, &jobs, client.InNamespace(e.ns))
		n := e.sidecar.startedCount()
		return len(jobs.Items) == 1 && jobs.Items[0].Name == winner+"-restore" && n == 0 && e.readyReason("hourly") == kcv1.ReasonPausedForRestore,
			fmt.Sprintf("%d jobs, %d backups, hourly %s", len(jobs.Items), n, e.readyReason("hourly"))
	})
	// The restore fails; the lock goes and the schedule takes its backup.
	e.setJobCondition(winner+"-restore", false)
	e.waitPhase(winner, kcv1.PhaseFailed)
	e.runPod("postgres-2", dbPods) // the inspector starts it by hand
	e.eventually("the schedule resumes", func() (bool, string) {
		return e.sidecar.startedCount() == 1, describe(e.kb("hourly"))
	})
}

// staleClient answers Gets and Lists of KeycloakBackups from a fixed old copy, as a cache
// that lags behind would.
type staleClient struct {
	client.Client
	old *kcv1.KeycloakBackup
}

func (c staleClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if kb, ok := obj.(*kcv1.KeycloakBackup); ok && key.Name == c.old.Name {
		c.old.DeepCopyInto(kb)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c staleClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if l, ok := list.(*kcv1.KeycloakBackupList); ok {
		l.Items = []kcv1.KeycloakBackup{*c.old.DeepCopy()}
		return nil
	}
	return c.Client.List(ctx, list, opts...)
}

func testStaleCache(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	kb := restoreResource("pitr", kcv1.RestoreLatest)
	e.create(kb)
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	var old *kcv1.KeycloakBackup
	e.eventually("step StoppingDatabase", func() (bool, string) {
		old = e.kb("pitr")
		return old.Status.Restore != nil && old.Status.Restore.Step == kcv1.RestoreStoppingDatabase, describe(old)
	})
	e.waitReplicas("postgres", 0)
	e.deletePods(dbPods)
	e.setJobCondition("pitr-restore", true)
	e.waitReplicas("postgres", 1)
	e.runPod("postgres-1", dbPods)
	e.eventually("step WaitingForArchive", func() (bool, string) {
		rs := e.kb("pitr").Status.Restore
		return rs.Step == kcv1.RestoreWaitingForArchive, describe(e.kb("pitr"))
	})

	// A reconciler whose cache still holds the resource at StoppingDatabase.
	stale := &kccontroller.Reconciler{
		Client: staleClient{e.r.Client, old}, APIReader: e.c, Recorder: e.r.Recorder, Clock: e.clock, Metrics: e.r.Metrics,
		SidecarImage: e.r.SidecarImage, SidecarEndpoint: e.r.SidecarEndpoint, PollInterval: time.Second, RetryInterval: time.Second,
		WindowRefreshInterval: time.Minute,
	}
	for range 3 {
		if _, err := stale.Reconcile(e.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: e.ns, Name: "pitr"}}); err != nil {
			t.Fatalf("reconcile with a stale cache: %v", err)
		}
	}
	e.consistently("a stale cache never moves the restore back", time.Second, func() (bool, string) {
		kb := e.kb("pitr")
		p := *e.deployment("postgres").Spec.Replicas
		return kb.Status.Restore.Step == kcv1.RestoreWaitingForArchive && p == 1, fmt.Sprintf("step %s, postgres %d", kb.Status.Restore.Step, p)
	})
	// A restore lock removed by hand mid-restore is taken again.
	d := e.deployment("postgres")
	patch := client.MergeFrom(d.DeepCopy())
	delete(d.Annotations, kccontroller.RestoreLockAnnotation)
	if err := e.c.Patch(e.ctx, d, patch); err != nil {
		t.Fatal(err)
	}
	e.poke("pitr")
	e.eventually("the restore lock taken again", func() (bool, string) {
		v := e.deployment("postgres").Annotations[kccontroller.RestoreLockAnnotation]
		return strings.HasPrefix(v, "pitr/"), v
	})
	// And it finishes normally.
	e.sidecar.with(func(f *fakeSidecar) { f.status.Timeline = 2 })
	e.waitPhase("pitr", kcv1.PhaseRestored)
}

func testRestoreRefused(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.runToJob(restoreResource("pitr", kcv1.RestoreLatest))
	why := "kcbackup: restoreTo latest: the archive holds no WAL after backup 20261201T000000Z on timeline 1"
	e.refuseJob("pitr-restore", "restoring backup ...\n"+why+"\n")
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreRefused)
	if msg := kb.Condition(kcv1.ConditionReady).Message; kb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(msg, why) {
		t.Errorf("status = %s; want Failed with the Job's reason %q", describe(kb), why)
	}
	e.waitReplicas("postgres", 1)
	e.waitReplicas("keycloak", 2)
	e.waitEvent("pitr", kcv1.ReasonRestoreRefused)
	if v := e.gauge("kcbackup_operator_restore_failed", "pitr"); v != 1 {
		t.Errorf("restore_failed = %v, want 1", v)
	}
	e.waitCounter("kcbackup_operator_restore_failures_total", "pitr", kcv1.ReasonRestoreRefused, 1)
	e.eventually("restore lock released", func() (bool, string) {
		v, held := e.deployment("postgres").Annotations[kccontroller.RestoreLockAnnotation]
		return !held, v
	})
	e.poke("pitr")
	e.consistently("scaled back for good", time.Second, func() (bool, string) {
		p, k := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas
		return p == 1 && k == 2, fmt.Sprintf("postgres %d keycloak %d", p, k)
	})
}

func testRestoreDeadline(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	kb := restoreResource("pitr", kcv1.RestoreLatest)
	kb.Spec.Restore = &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: 10 * time.Minute}}
	e.runToWaitingForArchive(kb)
	// PostgreSQL never promotes: nine minutes are within the deadline, eleven are not.
	e.clock.Step(9 * time.Minute)
	e.poke("pitr")
	e.consistently("still waiting before the deadline", time.Second, func() (bool, string) {
		kb := e.kb("pitr")
		return kb.Status.Phase == kcv1.PhaseRestoring, describe(kb)
	})
	e.clock.Step(2 * time.Minute)
	e.poke("pitr")
	got := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreTimedOut)
	if msg := got.Condition(kcv1.ConditionReady).Message; got.Status.Phase != kcv1.PhaseFailed || !strings.Contains(msg, "WaitingForArchive") || !strings.Contains(msg, "10m0s") {
		t.Errorf("status = %s; want Failed naming the step and the timeout", describe(got))
	}
	e.waitEvent("pitr", kcv1.ReasonRestoreTimedOut)
	if v := e.gauge("kcbackup_operator_restore_failed", "pitr"); v != 1 {
		t.Errorf("restore_failed = %v, want 1", v)
	}
	e.waitCounter("kcbackup_operator_restore_failures_total", "pitr", kcv1.ReasonRestoreTimedOut, 1)
	if k := *e.deployment("keycloak").Spec.Replicas; k != 0 {
		t.Errorf("keycloak scaled to %d after a recovery that never ended; want 0", k)
	}
	job := &batchv1.Job{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "pitr-restore"}, job); err != nil || *job.Spec.ActiveDeadlineSeconds != 600 {
		t.Errorf("restore Job activeDeadlineSeconds = %v (%v), want 600", job.Spec.ActiveDeadlineSeconds, err)
	}
}

func testStopDeadline(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.create(restoreResource("pitr", kcv1.RestoreLatest))
	e.waitReplicas("keycloak", 0)
	// Keycloak's pods never go (a stuck finalizer): the default 30 minutes pass.
	e.clock.Step(31 * time.Minute)
	e.poke("pitr")
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreTimedOut)
	if !strings.Contains(kb.Condition(kcv1.ConditionReady).Message, "StoppingApplication") {
		t.Errorf("status = %s; want the step named", describe(kb))
	}
	e.waitReplicas("keycloak", 2)
	if p := *e.deployment("postgres").Spec.Replicas; p != 1 {
		t.Errorf("postgres at %d replicas, want 1", p)
	}
}

func testKeycloakSchemaMismatch(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	kb := restoreResource("pitr", kcv1.RestoreLatest)
	kb.Spec.Restore = &kcv1.RestoreOptions{Sessions: kcv1.SessionsAll, KeycloakDatabase: "kc"}
	e.sidecar.with(func(f *fakeSidecar) { f.schemaMismatch = true })
	e.runToWaitingForArchive(kb)
	e.sidecar.with(func(f *fakeSidecar) { f.status.Timeline = 2 })
	got := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonKeycloakSchemaMismatch)
	if got.Status.Phase != kcv1.PhaseFailed || !strings.Contains(got.Condition(kcv1.ConditionReady).Message, "offline_user_session") {
		t.Errorf("status = %s; want Failed naming the missing table", describe(got))
	}
	e.sidecar.with(func(f *fakeSidecar) {
		if len(f.cleanups) == 0 || f.cleanups[0].Database != "kc" || f.cleanups[0].Sessions != "all" {
			t.Errorf("clean-up requests = %+v, want kc/all", f.cleanups)
		}
	})
	e.consistently("keycloak stays down", time.Second, func() (bool, string) {
		k := *e.deployment("keycloak").Spec.Replicas
		return k == 0, fmt.Sprint(k)
	})
}

// waitCounter waits for the counter to reach want: it is counted once the status is stored,
// which the test may see first.
func (e *env) waitCounter(metric, name, reason string, want float64) {
	e.t.Helper()
	e.eventually(fmt.Sprintf("%s{name=%s,reason=%s} = %v", metric, name, reason, want), func() (bool, string) {
		v := e.counter(metric, name, reason)
		return v == want, fmt.Sprint(v)
	})
}
