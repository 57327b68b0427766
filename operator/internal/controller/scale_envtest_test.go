package controller_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// keycloakResource is a Keycloak of the Keycloak Operator (the CRD stand-in in
// test/cluster/keycloak-operator/crd) asking for n instances.
func keycloakResource(name string, n int64) *unstructured.Unstructured {
	kc := &unstructured.Unstructured{}
	kc.SetAPIVersion("k8s.keycloak.org/v2beta1")
	kc.SetKind("Keycloak")
	kc.SetName(name)
	kc.SetLabels(optedIn(nil))
	_ = unstructured.SetNestedField(kc.Object, n, "spec", "instances")
	return kc
}

// keycloakInstances reads a Keycloak's spec.instances.
func (e *env) keycloakInstances(name string) int64 {
	e.t.Helper()
	kc := keycloakResource(name, 0)
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, kc); err != nil {
		e.t.Fatal(err)
	}
	n, _, _ := unstructured.NestedInt64(kc.Object, "spec", "instances")
	return n
}

// keycloakOperatorFixture: PostgreSQL, and Keycloak as the Keycloak Operator runs it: a
// Keycloak resource with 2 instances controlling a StatefulSet of 2 running pods.
func keycloakOperatorFixture(t *testing.T, cfg *rest.Config) *env {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	kc := keycloakResource("keycloak", 2)
	e.create(kc)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "keycloak", Labels: optedIn(map[string]string{"app": "keycloak"}),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "k8s.keycloak.org/v2beta1", Kind: "Keycloak", Name: "keycloak",
				UID: kc.GetUID(), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "keycloak"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pod": "keycloak"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "keycloak", Image: "quay.io/keycloak/keycloak"}}},
			},
		},
	}
	e.create(sts)
	e.runPod("keycloak-0", map[string]string{"pod": "keycloak"})
	e.runPod("keycloak-1", map[string]string{"pod": "keycloak"})
	return e
}

// testRestoreScalesTheKeycloakResource: the selector matches the StatefulSet the Keycloak
// Operator owns; the restore scales the Keycloak resource (its /scale is .spec.instances),
// never the StatefulSet, records what it found and puts back exactly 2 instances.
func testRestoreScalesTheKeycloakResource(t *testing.T, cfg *rest.Config) {
	e := keycloakOperatorFixture(t, cfg)
	target := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	e.create(restoreResource("pitr", target))

	e.eventually("Keycloak scaled to 0 instances", func() (bool, string) {
		n := e.keycloakInstances("keycloak")
		return n == 0, fmt.Sprint(n)
	})
	sts := &appsv1.StatefulSet{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "keycloak"}, sts); err != nil {
		t.Fatal(err)
	}
	if *sts.Spec.Replicas != 2 {
		t.Errorf("the StatefulSet the Keycloak Operator owns was scaled to %d by kcbackup; only the Keycloak resource may be", *sts.Spec.Replicas)
	}
	kb := e.kb("pitr")
	want := kcv1.ScaledWorkload{APIVersion: "k8s.keycloak.org/v2beta1", Kind: "Keycloak", Name: "keycloak", Replicas: 2,
		Selected: []kcv1.WorkloadReference{{Kind: "StatefulSet", Name: "keycloak"}}}
	if rs := kb.Status.Restore; rs == nil || len(rs.Applications) != 1 || fmt.Sprint(rs.Applications[0]) != fmt.Sprint(want) {
		t.Errorf("status.restore.applications = %+v, want %+v", kb.Status.Restore, want)
	}
	// PostgreSQL waits until the StatefulSet's pods are gone (the Keycloak Operator's job).
	e.consistently("PostgreSQL keeps running while Keycloak's pods run", 500*time.Millisecond, func() (bool, string) {
		return *e.deployment("postgres").Spec.Replicas == 1, describe(e.kb("pitr"))
	})
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.waitReplicas("postgres", 0)
	e.deletePods(dbPods)
	e.setJobCondition("pitr-restore", true)
	e.waitReplicas("postgres", 1)
	e.runPod("postgres-1", dbPods)
	e.sidecar.with(func(f *fakeSidecar) { f.status.Timeline = 2; f.status.ArchivedLSN = "0/5000000" })
	e.waitPhase("pitr", kcv1.PhaseRestored)
	if n := e.keycloakInstances("keycloak"); n != 2 {
		t.Errorf("Keycloak instances after the restore = %d, want 2 as before", n)
	}
}

// testRestoreWithoutApplicationIsRefused: no applicationSelector, or one that selects
// nothing, refuses the restore before anything is touched; allowWithoutApplication lets it run.
func testRestoreWithoutApplicationIsRefused(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	target := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	unset := restoreResource("unset", target)
	unset.Spec.ApplicationSelector = nil
	nothing := restoreResource("nothing", target)
	nothing.Spec.ApplicationSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "no-such-app"}}
	for _, kb := range []*kcv1.KeycloakBackup{unset, nothing} {
		e.create(kb)
		got := e.waitPhase(kb.Name, kcv1.PhaseFailed)
		if c := got.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonNoApplicationToStop ||
			!strings.Contains(c.Message, "allowWithoutApplication") || !strings.Contains(c.Message, "nothing was changed") {
			t.Errorf("%s: %s; want Failed NoApplicationToStop naming allowWithoutApplication", kb.Name, describe(got))
		}
	}
	if *e.deployment("postgres").Spec.Replicas != 1 || *e.deployment("keycloak").Spec.Replicas != 2 {
		t.Errorf("a refused restore scaled something")
	}
	allowed := restoreResource("allowed", target)
	allowed.Spec.ApplicationSelector = nil
	allowed.Spec.Restore = &kcv1.RestoreOptions{AllowWithoutApplication: true}
	e.create(allowed)
	e.waitReplicas("postgres", 0)
	if r := *e.deployment("keycloak").Spec.Replicas; r != 2 {
		t.Errorf("keycloak scaled to %d by a restore without applicationSelector", r)
	}
}

// testKeycloakWithoutInstancesIsRefused: a Keycloak resource without spec.instances (its
// operator then runs 1) has a /scale that can be neither read nor set: the restore is
// refused before anything is touched, saying to set spec.instances.
func testKeycloakWithoutInstancesIsRefused(t *testing.T, cfg *rest.Config) {
	e := keycloakOperatorFixture(t, cfg)
	kc := keycloakResource("keycloak", 0)
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "keycloak"}, kc); err != nil {
		t.Fatal(err)
	}
	unstructured.RemoveNestedField(kc.Object, "spec", "instances")
	if err := e.c.Update(e.ctx, kc); err != nil {
		t.Fatal(err)
	}
	e.create(restoreResource("pitr", time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)))
	kb := e.waitPhase("pitr", kcv1.PhaseFailed)
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonApplicationNotScalable ||
		!strings.Contains(c.Message, "spec.instances") || !strings.Contains(c.Message, "nothing was changed") {
		t.Errorf("%s; want Failed ApplicationNotScalable naming spec.instances", describe(kb))
	}
	if *e.deployment("postgres").Spec.Replicas != 1 {
		t.Error("a refused restore scaled PostgreSQL")
	}
}
