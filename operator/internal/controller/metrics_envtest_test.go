package controller_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

func testAlertGaugesComeFromStatusAfterARestart(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	sched := volumeBackup("nightly")
	sched.Spec.Schedule = "0 3 * * *"
	e.create(sched)
	e.waitPhase("nightly", kcv1.PhaseScheduled)
	failed := restoreResource("pitr", kcv1.RestoreLatest)
	failed.Spec.InstanceSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "gone"}}
	e.create(failed)
	e.waitCondition("pitr", kcv1.ConditionInstanceResolved, metav1.ConditionFalse, kcv1.ReasonNoWorkloadMatched)

	// What an earlier operator process stored: a success at T, then a failed attempt; and a
	// restore that failed.
	success := time.Date(2026, 11, 30, 3, 0, 7, 0, time.UTC)
	e.patchStatus("nightly", func(st *kcv1.KeycloakBackupStatus) {
		st.LastBackupTime = &metav1.Time{Time: success}
		st.LastFailedBackupTime = &metav1.Time{Time: success.Add(24 * time.Hour)}
	})
	e.patchStatus("pitr", func(st *kcv1.KeycloakBackupStatus) {
		st.Phase = kcv1.PhaseFailed
		st.Restore = &kcv1.RestoreStatus{Step: kcv1.RestoreStoppingApplication}
	})

	// A new operator process: fresh reconciler, fresh registry.
	reg := prometheus.NewRegistry()
	m, err := kccontroller.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	r := &kccontroller.Reconciler{
		Client: e.r.Client, APIReader: e.c, Recorder: e.r.Recorder, Clock: e.clock, Metrics: m,
		SidecarImage: e.r.SidecarImage, SidecarEndpoint: e.r.SidecarEndpoint, PollInterval: time.Second, RetryInterval: time.Second,
		WindowRefreshInterval: time.Minute,
	}
	for _, name := range []string{"nightly", "pitr"} {
		if _, err := r.Reconcile(e.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: e.ns, Name: name}}); err != nil {
			t.Fatalf("reconcile %s: %v", name, err)
		}
	}
	for _, tc := range []struct {
		metric, name string
		want         float64
	}{
		{"kcbackup_operator_last_backup_success_timestamp_seconds", "nightly", float64(success.Unix())},
		{"kcbackup_operator_last_backup_failed", "nightly", 1},
		{"kcbackup_operator_schedule_interval_seconds", "nightly", 86400},
		{"kcbackup_operator_restore_failed", "pitr", 1},
	} {
		if got, ok := gaugeIn(t, reg, tc.metric, e.ns, tc.name); !ok || got != tc.want {
			t.Errorf("after a restart, %s{name=%q} = %v (exported: %v); want %v from the stored status", tc.metric, tc.name, got, ok, tc.want)
		}
	}
}

// patchStatus changes the stored status of a resource, as an earlier operator process did.
func (e *env) patchStatus(name string, change func(st *kcv1.KeycloakBackupStatus)) {
	e.t.Helper()
	kb := e.kb(name)
	patch := client.MergeFrom(kb.DeepCopy())
	change(&kb.Status)
	if err := e.c.Status().Patch(e.ctx, kb, patch); err != nil {
		e.t.Fatalf("patch status of %s: %v", name, err)
	}
}

// gaugeIn returns the gauge of metric for the resource ns/name in reg.
func gaugeIn(t *testing.T, reg *prometheus.Registry, metric, ns, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["namespace"] == ns && l["name"] == name {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}
