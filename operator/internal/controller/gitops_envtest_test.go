package controller_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// declareSidecar applies, as the user's GitOps tool would, the patch `kcbackup-operator
// sidecar-manifest` prints for kb and image, plus extra workload annotations.
func (e *env) declareSidecar(kb *kcv1.KeycloakBackup, image string, verify bool, annotations map[string]string) {
	e.t.Helper()
	d := e.deployment("postgres")
	patch, err := kccontroller.SidecarPatch(image, kccontroller.DeliverByImageVolume, kb, d)
	if err != nil {
		e.t.Fatal(err)
	}
	md := patch["metadata"].(map[string]any)
	ann := md["annotations"].(map[string]string)
	if !verify {
		delete(ann, kccontroller.SidecarModeAnnotation)
	}
	for k, v := range annotations {
		ann[k] = v
	}
	b, err := json.Marshal(patch)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.c.Patch(e.ctx, d, client.RawPatch(types.StrategicMergePatchType, b)); err != nil {
		e.t.Fatalf("apply the sidecar manifest: %v", err)
	}
}

func sidecarImageOf(e *env) string {
	if sc := sidecarOf(e.deployment("postgres")); sc != nil {
		return sc.Image
	}
	return ""
}

// testVerifyModeChecksTheDeclaredSidecar: a workload in verify mode is never patched; the
// resource waits, saying so, until the manifest sidecar-manifest prints is applied, then
// backs up.
func testVerifyModeChecksTheDeclaredSidecar(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	d := postgresDeployment("postgres", dbLabels)
	d.Annotations = map[string]string{kccontroller.SidecarModeAnnotation: kccontroller.SidecarModeVerify}
	e.create(d)
	e.runPod("postgres-0", dbPods)
	kb := volumeBackup("once")
	e.create(kb)
	e.waitCondition("once", kcv1.ConditionSidecarUpToDate, metav1.ConditionFalse, kcv1.ReasonSidecarNotDeclared)
	e.consistently("the operator does not patch a verify-mode workload", 500*time.Millisecond, func() (bool, string) {
		return sidecarOf(e.deployment("postgres")) == nil && e.sidecar.startedCount() == 0, "sidecar injected or backup started"
	})
	e.declareSidecar(kb, "registry.example/kcbackup:old", true, nil)
	e.poke("once")
	// An older image declared: held until the manifests declare the new one, and backups go on.
	e.waitCondition("once", kcv1.ConditionSidecarUpToDate, metav1.ConditionFalse, kcv1.ReasonSidecarUpgradeHeld)
	e.waitPhase("once", kcv1.PhaseCompleted)
	if img := sidecarImageOf(e); img != "registry.example/kcbackup:old" {
		t.Fatalf("verify mode: sidecar image = %q, want the declared one untouched", img)
	}
	again := volumeBackup("again")
	e.declareSidecar(again, "registry.example/kcbackup:test", true, nil)
	e.create(again)
	e.waitCondition("again", kcv1.ConditionSidecarUpToDate, metav1.ConditionTrue, kcv1.ReasonSidecarUpToDate)
	e.waitPhase("again", kcv1.PhaseCompleted)
}

// testHeldUpgradeKeepsTheRunningSidecar: by default a sidecar of another image (nothing
// else changed: an operator upgrade) is kept, backups go on, and the condition says how to
// allow it; the annotation "false" upgrades it, and a change of storage is never held.
func testHeldUpgradeKeepsTheRunningSidecar(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	kb := volumeBackup("once")
	e.declareSidecar(kb, "registry.example/kcbackup:old", false, nil)
	e.create(kb)
	got := e.waitCondition("once", kcv1.ConditionSidecarUpToDate, metav1.ConditionFalse, kcv1.ReasonSidecarUpgradeHeld)
	if msg := got.Condition(kcv1.ConditionSidecarUpToDate).Message; !strings.Contains(msg, kccontroller.HoldSidecarUpgradeAnnotation+`: "false"`) ||
		!strings.Contains(msg, "registry.example/kcbackup:old") || !strings.Contains(msg, "registry.example/kcbackup:test") {
		t.Errorf("SidecarUpToDate = %q; want both images and how to allow the upgrade", msg)
	}
	e.waitPhase("once", kcv1.PhaseCompleted)
	if img := sidecarImageOf(e); img != "registry.example/kcbackup:old" {
		t.Fatalf("held sidecar image = %q, want the old one kept", img)
	}
	// A value other than "false" holds too (the annotation's earlier meaning, "true", included).
	d := e.deployment("postgres")
	before := d.DeepCopy()
	metav1.SetMetaDataAnnotation(&d.ObjectMeta, kccontroller.HoldSidecarUpgradeAnnotation, "true")
	if err := e.c.Patch(e.ctx, d, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	e.create(volumeBackup("held"))
	e.waitPhase("held", kcv1.PhaseCompleted)
	if img := sidecarImageOf(e); img != "registry.example/kcbackup:old" {
		t.Fatalf("held sidecar image = %q, want the old one kept", img)
	}
	d = e.deployment("postgres")
	before = d.DeepCopy()
	metav1.SetMetaDataAnnotation(&d.ObjectMeta, kccontroller.HoldSidecarUpgradeAnnotation, "false")
	if err := e.c.Patch(e.ctx, d, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	// A finished one-off backup no longer reconciles; a new resource sees the upgrade through.
	e.create(volumeBackup("again"))
	e.eventually("sidecar upgraded once allowed", func() (bool, string) {
		img := sidecarImageOf(e)
		return img == "registry.example/kcbackup:test", fmt.Sprint(img)
	})
}
