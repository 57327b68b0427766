package controller_test

// Least privilege and removal: the opt-in label, the removal a deletion runs, and an
// operator with nothing but the namespaced RBAC of deploy/rbac/namespaced.

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/test/harness"
)

// withoutOptIn removes the opt-in label from a fixture.
func withoutOptIn(o client.Object) client.Object {
	l := o.GetLabels()
	delete(l, kccontroller.OptInLabel)
	o.SetLabels(l)
	return o
}

// testWorkloadWithoutOptInIsNotTouched: a KeycloakBackup selecting a workload without the
// label gets a condition naming the workload and the label, and nothing is done to the
// workload; once labelled, the backup proceeds.
func testWorkloadWithoutOptInIsNotTouched(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(withoutOptIn(postgresDeployment("postgres", dbLabels)))
	e.runPod("postgres-0", dbPods)
	e.create(volumeBackup("nolabel"))
	kb := e.waitCondition("nolabel", kcv1.ConditionInstanceResolved, metav1.ConditionFalse, kccontroller.ReasonWorkloadNotOptedIn)
	if msg := kb.Condition(kcv1.ConditionInstanceResolved).Message; !strings.Contains(msg, "Deployment/postgres") || !strings.Contains(msg, kccontroller.OptInLabel) {
		t.Errorf("condition message %q names neither the workload nor the label", msg)
	}
	e.consistently("the workload stays untouched", time.Second, func() (bool, string) {
		return sidecarOf(e.deployment("postgres")) == nil, "sidecar injected"
	})
	e.assertUntouched("postgres")
	d := e.deployment("postgres")
	d.Labels[kccontroller.OptInLabel] = kccontroller.OptInValue
	if err := e.c.Update(e.ctx, d); err != nil {
		t.Fatal(err)
	}
	e.waitPhase("nolabel", kcv1.PhaseCompleted)
	if sidecarOf(e.deployment("postgres")) == nil {
		t.Error("no sidecar after the workload was labelled")
	}
}

// testRestoreOfApplicationWithoutOptInIsRefused: what a restore would scale (the Keycloak
// resource) must carry the label itself; without it the restore is refused before anything
// stops.
func testRestoreOfApplicationWithoutOptInIsRefused(t *testing.T, cfg *rest.Config) {
	e := keycloakOperatorFixture(t, cfg)
	kc := keycloakResource("keycloak", 0)
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "keycloak"}, kc); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Update(e.ctx, withoutOptIn(kc).(*unstructured.Unstructured)); err != nil {
		t.Fatal(err)
	}
	e.create(restoreResource("pitr", time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)))
	kb := e.waitPhase("pitr", kcv1.PhaseFailed)
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kccontroller.ReasonWorkloadNotOptedIn ||
		!strings.Contains(c.Message, "Keycloak/keycloak") || !strings.Contains(c.Message, "nothing was changed") {
		t.Errorf("%s; want Failed WorkloadNotOptedIn naming Keycloak/keycloak", describe(kb))
	}
	if n := e.keycloakInstances("keycloak"); n != 2 {
		t.Errorf("a refused restore scaled Keycloak to %d instances", n)
	}
	if *e.deployment("postgres").Spec.Replicas != 1 {
		t.Error("a refused restore scaled PostgreSQL")
	}
}

// testOptInNotRequiredWhenTurnedOff: --require-workload-opt-in=false acts on any workload.
func testOptInNotRequiredWhenTurnedOff(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg, func(r *kccontroller.Reconciler) { r.AllowWorkloadsWithoutOptIn = true })
	e.create(withoutOptIn(postgresDeployment("postgres", dbLabels)))
	e.runPod("postgres-0", dbPods)
	e.create(volumeBackup("any"))
	e.waitPhase("any", kcv1.PhaseCompleted)
}

// slotCount counts the replication slots named kcbackup.
func slotCount(t *testing.T, pg *harness.Postgres) int {
	t.Helper()
	out, err := pg.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '"+kccontroller.SlotName+"'")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("count of slots %q: %v", out, err)
	}
	return n
}

// postgresWithSlot starts a real PostgreSQL holding the slot the sidecar would have made,
// and returns it with a reconciler option pointing the removal at it.
func postgresWithSlot(t *testing.T) (*harness.Postgres, func(r *kccontroller.Reconciler)) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	if err := pg.Exec(context.Background(), "SELECT pg_create_physical_replication_slot('"+kccontroller.SlotName+"', true)"); err != nil {
		t.Fatal(err)
	}
	if n := slotCount(t, pg); n != 1 {
		t.Fatalf("%d slots %s after creating one", n, kccontroller.SlotName)
	}
	return pg, func(r *kccontroller.Reconciler) {
		r.PostgresAddress = func(*corev1.Pod, int32) string { return "127.0.0.1:" + strconv.Itoa(pg.Port()) }
	}
}

// superuserBackup is a volume backup connecting as the harness' superuser.
func superuserBackup(name string) *kcv1.KeycloakBackup {
	kb := volumeBackup(name)
	kb.Spec.Postgres.User = harness.PGSuperuser
	return kb
}

// removed waits until the resource is gone and checks that the workload has no sidecar, no
// volume or mount of the operator's, no token Secret and no slot left.
func (e *env) removed(name string, pg *harness.Postgres) {
	e.t.Helper()
	e.eventually("resource "+name+" deleted", func() (bool, string) {
		kb := &kcv1.KeycloakBackup{}
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, kb)
		return apierrors.IsNotFound(err), fmt.Sprint(err, " ", describe(kb))
	})
	d := e.deployment("postgres")
	if sidecarOf(d) != nil || len(d.Spec.Template.Spec.InitContainers) != 0 {
		e.t.Errorf("init containers left in the pod template: %v", d.Spec.Template.Spec.InitContainers)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kcbackup") {
			e.t.Errorf("volume %s left in the pod template", v.Name)
		}
	}
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		if strings.HasPrefix(m.Name, "kcbackup") {
			e.t.Errorf("mount %s left in PostgreSQL's container", m.Name)
		}
	}
	if _, ok := d.Spec.Template.Labels[kcv1.SidecarPodLabel]; ok {
		e.t.Errorf("pod template still labelled %s", kcv1.SidecarPodLabel)
	}
	var s corev1.Secret
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: kccontroller.TokenSecretName("postgres")}, &s); !apierrors.IsNotFound(err) {
		e.t.Errorf("token Secret left (err %v)", err)
	}
	if n := slotCount(e.t, pg); n != 0 {
		e.t.Errorf("%d replication slots %s left", n, kccontroller.SlotName)
	}
}

// testDeletionRemovesSidecarSlotAndToken: deleting the resource that protects a workload
// takes the sidecar out of its pod template, drops the slot in PostgreSQL and deletes the
// token Secret; the archive is not pruned.
func testDeletionRemovesSidecarSlotAndToken(t *testing.T, cfg *rest.Config) {
	pg, at := postgresWithSlot(t)
	e := newEnv(t, cfg, at)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.create(superuserBackup("protect"))
	kb := e.waitPhase("protect", kcv1.PhaseCompleted)
	if !slices.Contains(kb.Finalizers, kccontroller.RemovalFinalizer) {
		t.Fatalf("finalizers %v, want %s", kb.Finalizers, kccontroller.RemovalFinalizer)
	}
	if err := e.c.Delete(e.ctx, kb); err != nil {
		t.Fatal(err)
	}
	e.removed("protect", pg)
	e.sidecar.with(func(f *fakeSidecar) {
		if len(f.prunes) != 0 {
			t.Errorf("the removal pruned the archive %d times", len(f.prunes))
		}
	})
}

// testSlotThatCannotBeDroppedHoldsTheDeletion: when PostgreSQL cannot be reached, the
// resource stays with a condition saying the slot is left and how to drop it; the
// keep-on-delete annotation then lets it go.
func testSlotThatCannotBeDroppedHoldsTheDeletion(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg, func(r *kccontroller.Reconciler) {
		r.PostgresAddress = func(*corev1.Pod, int32) string { return "127.0.0.1:1" } // nothing listens
	})
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.create(superuserBackup("protect"))
	e.waitPhase("protect", kcv1.PhaseCompleted)
	if err := e.c.Delete(e.ctx, e.kb("protect")); err != nil {
		t.Fatal(err)
	}
	kb := e.waitCondition("protect", kccontroller.ConditionRemoval, metav1.ConditionFalse, kccontroller.ReasonSlotLeft)
	if msg := kb.Condition(kccontroller.ConditionRemoval).Message; !strings.Contains(msg, "pg_drop_replication_slot") || !strings.Contains(msg, kccontroller.KeepOnDeleteAnnotation) {
		t.Errorf("condition message %q says neither how to drop the slot nor how to let the resource go", msg)
	}
	e.waitEvent("protect", kccontroller.ReasonSlotLeft)
	if sidecarOf(e.deployment("postgres")) != nil {
		t.Error("the sidecar is still in the pod template")
	}
	kb.Annotations = map[string]string{kccontroller.KeepOnDeleteAnnotation: "true"}
	if err := e.c.Update(e.ctx, kb); err != nil {
		t.Fatal(err)
	}
	e.eventually("resource deleted once kept", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "protect"}, &kcv1.KeycloakBackup{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// testDeletionKeepsTheSidecarAnotherResourceUses: a schedule still protecting the workload
// keeps its sidecar, slot and token when a one-off backup of it is deleted.
func testDeletionKeepsTheSidecarAnotherResourceUses(t *testing.T, cfg *rest.Config) {
	pg, at := postgresWithSlot(t)
	e := newEnv(t, cfg, at)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.create(superuserBackup("first"))
	e.create(superuserBackup("second"))
	e.waitPhase("first", kcv1.PhaseCompleted)
	e.waitPhase("second", kcv1.PhaseCompleted)
	if err := e.c.Delete(e.ctx, e.kb("first")); err != nil {
		t.Fatal(err)
	}
	e.eventually("first deleted", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "first"}, &kcv1.KeycloakBackup{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if sidecarOf(e.deployment("postgres")) == nil || slotCount(t, pg) != 1 {
		t.Fatal("deleting one of two resources took the sidecar or the slot")
	}
	if err := e.c.Delete(e.ctx, e.kb("second")); err != nil {
		t.Fatal(err)
	}
	e.removed("second", pg)
}

// asOperatorServiceAccount creates, in ns, the operator's ServiceAccount with nothing but
// deploy/rbac/namespaced's Role and RoleBinding, and returns a config impersonating it.
func asOperatorServiceAccount(t *testing.T, cfg *rest.Config) func(c client.Client, ns string) *rest.Config {
	return func(c client.Client, ns string) *rest.Config {
		ctx := context.Background()
		var role rbacv1.Role
		var rb rbacv1.RoleBinding
		for file, obj := range map[string]any{"role.yaml": &role, "role_binding.yaml": &rb} {
			b, err := os.ReadFile("../../../deploy/rbac/namespaced/" + file)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(b, obj); err != nil {
				t.Fatalf("deploy/rbac/namespaced/%s: %v", file, err)
			}
		}
		role.Namespace, rb.Namespace = ns, ns
		rb.Subjects[0].Namespace = ns // the operator runs in the namespace it watches (OwnNamespace)
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: rb.Subjects[0].Name}}
		for _, o := range []client.Object{sa, &role, &rb} {
			if err := c.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		as := rest.CopyConfig(cfg)
		as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa.Name}
		return as
	}
}

// testNamespacedRBACAloneIsEnough: an operator with only the namespaced Role (impersonating
// its ServiceAccount) injects the sidecar, completes a backup and removes everything on
// deletion in its namespace; outside it, it may not even read a Deployment.
func testNamespacedRBACAloneIsEnough(t *testing.T, cfg *rest.Config) {
	pg, at := postgresWithSlot(t)
	var opCfg *rest.Config
	as := asOperatorServiceAccount(t, cfg)
	e := newEnvAs(t, cfg, func(c client.Client, ns string) *rest.Config { opCfg = as(c, ns); return opCfg }, at)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.create(superuserBackup("protect"))
	e.waitPhase("protect", kcv1.PhaseCompleted)
	if sidecarOf(e.deployment("postgres")) == nil {
		t.Fatal("no sidecar injected")
	}
	if err := e.c.Delete(e.ctx, e.kb("protect")); err != nil {
		t.Fatal(err)
	}
	e.removed("protect", pg)

	// The Role is all it has: the same ServiceAccount reads nothing elsewhere.
	op, err := client.New(opCfg, client.Options{Scheme: e.c.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.List(e.ctx, &appsv1.DeploymentList{}, client.InNamespace("default")); !apierrors.IsForbidden(err) {
		t.Errorf("listing Deployments in namespace default as the operator: %v, want Forbidden (is the API server authorising?)", err)
	}
}

// testDeletionDropsTheSlotOnEveryServer: with two servers (a primary and a standby that
// keeps its own slot for a takeover), the removal drops the slot on both, whichever pod
// is listed first.
func testDeletionDropsTheSlotOnEveryServer(t *testing.T, cfg *rest.Config) {
	pg0, _ := postgresWithSlot(t)
	pg1, _ := postgresWithSlot(t)
	port := map[string]int{"postgres-0": pg0.Port(), "postgres-1": pg1.Port()}
	e := newEnv(t, cfg, func(r *kccontroller.Reconciler) {
		r.PostgresAddress = func(p *corev1.Pod, _ int32) string { return "127.0.0.1:" + strconv.Itoa(port[p.Name]) }
	})
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.runPod("postgres-1", dbPods)
	e.create(superuserBackup("protect"))
	kb := e.waitPhase("protect", kcv1.PhaseCompleted)
	if err := e.c.Delete(e.ctx, kb); err != nil {
		t.Fatal(err)
	}
	e.removed("protect", pg0)
	if n := slotCount(t, pg1); n != 0 {
		t.Errorf("%d slots %s left on the second server; the removal must drop it on every server", n, kccontroller.SlotName)
	}
}
