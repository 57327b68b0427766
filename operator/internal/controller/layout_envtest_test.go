package controller_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// testLayoutIsReportedOnTheFirstReconcile: what would refuse a restore (or change it) is a
// condition as soon as the workload is resolved, on resources that only back up.
func testLayoutIsReportedOnTheFirstReconcile(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	variant := func(name string, change func(d *appsv1.Deployment)) {
		d := postgresDeployment(name, map[string]string{"db": name})
		change(d)
		e.create(d)
		kb := volumeBackup(name)
		kb.Spec.InstanceSelector = metav1.LabelSelector{MatchLabels: map[string]string{"db": name}}
		e.create(kb)
	}
	variant("plain", func(*appsv1.Deployment) {})
	variant("root", func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PGDATA", Value: "/var/lib/postgresql/data"}}
	})
	variant("emptydir", func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	})
	variant("replicas", func(d *appsv1.Deployment) { d.Spec.Replicas = ptr.To[int32](2) })
	variant("bitnami", func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.Containers[0].Image = "docker.io/bitnami/postgresql:17.2.0"
	})
	for name, want := range map[string]struct {
		status metav1.ConditionStatus
		reason string
	}{
		"plain":    {metav1.ConditionTrue, kcv1.ReasonRestorable},
		"root":     {metav1.ConditionFalse, kcv1.ReasonDataDirAtVolumeRoot},
		"emptydir": {metav1.ConditionFalse, kcv1.ReasonDataNotOnClaim},
		"replicas": {metav1.ConditionFalse, kcv1.ReasonMultipleReplicas},
		"bitnami":  {metav1.ConditionTrue, kcv1.ReasonBitnamiImage},
	} {
		e.waitCondition(name, kcv1.ConditionRestorable, want.status, want.reason)
	}
}

// testRestoreOfReplicasIsRefusedBeforeAnythingStops: a PostgreSQL workload with standbys is
// not restored in place; the refusal names why and what to do, and nothing is scaled.
func testRestoreOfReplicasIsRefusedBeforeAnythingStops(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	d := postgresDeployment("postgres", dbLabels)
	d.Spec.Replicas = ptr.To[int32](2)
	e.create(d)
	e.create(appDeployment("keycloak", 2))
	e.runPod("postgres-0", dbPods)
	e.create(restoreResource("pitr", time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)))
	kb := e.waitPhase("pitr", kcv1.PhaseFailed)
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonMultipleReplicas ||
		!strings.Contains(c.Message, "2 replicas") || !strings.Contains(c.Message, "Scale it to 1 replica") {
		t.Errorf("%s; want Failed MultipleReplicas saying why and what to do", describe(kb))
	}
	if *e.deployment("postgres").Spec.Replicas != 2 || *e.deployment("keycloak").Spec.Replicas != 2 {
		t.Error("a refused restore scaled something")
	}
}

// testBitnamiRestoreKeepsRecoverySignal: with a Bitnami image, PostgreSQL starts restored
// with POSTGRESQL_PERFORM_RESTORE=yes, which goes once it promoted.
func testBitnamiRestoreKeepsRecoverySignal(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	d := postgresDeployment("postgres", dbLabels)
	d.Spec.Template.Spec.Containers[0].Image = "registry.example/bitnamilegacy/postgresql:16"
	e.create(d)
	e.create(appDeployment("keycloak", 2))
	e.runPod("postgres-0", dbPods)
	e.runPod("keycloak-a", map[string]string{"pod": "keycloak"})
	performRestore := func() string {
		for _, c := range e.deployment("postgres").Spec.Template.Spec.Containers {
			for _, v := range c.Env {
				if v.Name == kccontroller.PerformRestoreEnv {
					return v.Value
				}
			}
		}
		return ""
	}
	e.runToJob(restoreResource("pitr", time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)))
	if v := performRestore(); v != "" {
		t.Fatalf("%s=%q before the restored start", kccontroller.PerformRestoreEnv, v)
	}
	e.setJobCondition("pitr-restore", true)
	e.waitReplicas("postgres", 1)
	if v := performRestore(); v != "yes" {
		t.Fatalf("PostgreSQL started restored with %s=%q, want yes", kccontroller.PerformRestoreEnv, v)
	}
	e.runPod("postgres-1", dbPods)
	e.sidecar.with(func(f *fakeSidecar) { f.status.Timeline = 2; f.status.ArchivedLSN = "0/5000000" })
	e.waitPhase("pitr", kcv1.PhaseRestored)
	if v := performRestore(); v != "" {
		t.Errorf("%s=%q after PostgreSQL promoted, want it removed", kccontroller.PerformRestoreEnv, v)
	}
}

// testReplicationRefusedIsNamed: a sidecar that answers but is refused replication by
// pg_hba.conf makes SidecarReady False, saying what line to add.
func testReplicationRefusedIsNamed(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.sidecar.with(func(f *fakeSidecar) {
		f.status.Streaming = false
		f.status.LastError = `connect: FATAL: no pg_hba.conf entry for replication connection from host "127.0.0.1", user "postgres", no encryption (SQLSTATE 28000)`
	})
	e.create(volumeBackup("once"))
	kb := e.waitCondition("once", kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonReplicationRefused)
	if c := kb.Condition(kcv1.ConditionSidecarReady); !strings.Contains(c.Message, "host replication postgres 127.0.0.1/32") {
		t.Errorf("SidecarReady message %q does not say which pg_hba.conf line to add", c.Message)
	}
}

// testBackupGoesToTheStreamingSidecar: with a primary and a standby running, the base
// backup is asked of the sidecar that streams WAL (the primary's), never of the standby's,
// whichever of the two pods is listed first.
func testBackupGoesToTheStreamingSidecar(t *testing.T, cfg *rest.Config) {
	for _, standbyPod := range []string{"postgres-a", "postgres-b"} {
		t.Run("standby "+standbyPod, func(t *testing.T) {
			var standbyURL atomic.Pointer[string]
			var e *env
			e = newEnv(t, cfg, func(r *kccontroller.Reconciler) {
				r.SidecarEndpoint = func(p *corev1.Pod) string {
					if p.Name == standbyPod {
						return *standbyURL.Load()
					}
					return e.sidecar.srv.URL
				}
			})
			standby := newFakeSidecar(t, e.sidecar.token)
			standby.with(func(f *fakeSidecar) { f.status.Streaming = false })
			standbyURL.Store(&standby.srv.URL)
			d := postgresDeployment("postgres", dbLabels)
			d.Spec.Replicas = ptr.To[int32](2)
			e.create(d)
			e.runPod("postgres-a", dbPods)
			e.runPod("postgres-b", dbPods)
			e.create(volumeBackup("once"))
			e.waitPhase("once", kcv1.PhaseCompleted)
			if n, m := e.sidecar.startedCount(), standby.startedCount(); n != 1 || m != 0 {
				t.Errorf("backups started: %d on the primary's sidecar, %d on the standby's; want 1 and 0", n, m)
			}
		})
	}
}
