package controller

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Workloads owned by Argo CD or Flux: the user may declare the sidecar in their own
// manifests (the operator then only verifies it), and may hold sidecar upgrades, which
// change the pod template and so restart PostgreSQL, until they allow one.
const (
	// SidecarModeAnnotation on the PostgreSQL workload: "verify" means the user declares
	// the sidecar (`kcbackup-operator sidecar-manifest` prints it) and the operator never
	// patches the pod template; it checks the declared one and waits, with SidecarUpToDate
	// False, while it differs from what it would inject. Any other value, or none: inject.
	SidecarModeAnnotation = "kcbackup.keycloak.org/sidecar-mode"
	// SidecarModeVerify is the SidecarModeAnnotation value of verify mode.
	SidecarModeVerify = "verify"
	// HoldSidecarUpgradeAnnotation on the PostgreSQL workload says whether a new operator's
	// sidecar (another image, nothing else changed) is rolled out, which restarts
	// PostgreSQL. Absent or "true": held (the default since 0.3: upgrading the operator
	// restarts nothing); the running sidecar keeps archiving and SidecarUpToDate is False
	// with reason SidecarUpgradeHeld. "false": rolled out at once. A change of the
	// resource's storage or connection is never held: the running sidecar would archive
	// to the wrong place.
	HoldSidecarUpgradeAnnotation = "kcbackup.keycloak.org/hold-sidecar-upgrade"
)

// verifyOnly reports whether the workload declares its own sidecar.
func verifyOnly(w workload) bool {
	return w.Obj.GetAnnotations()[SidecarModeAnnotation] == SidecarModeVerify
}

// sidecarNotDeclared records that a verify-mode workload lacks the expected sidecar.
func (r *Reconciler) sidecarNotDeclared(kb *kcv1.KeycloakBackup, w workload) {
	what := "declares no kcbackup sidecar"
	if hasSidecar(w.Template()) {
		what = "declares a kcbackup sidecar that differs from the one this operator builds for this resource"
	}
	msg := fmt.Sprintf("%s is in verify mode (annotation %s=%s) and its pod template %s: print the expected one with "+
		"`kcbackup-operator sidecar-manifest --resource <this KeycloakBackup> --workload <the workload>` and commit it to the "+
		"workload's manifests; backups and restores wait until then", w, SidecarModeAnnotation, SidecarModeVerify, what)
	if c := kb.Condition(kcv1.ConditionSidecarUpToDate); c == nil || c.Reason != kcv1.ReasonSidecarNotDeclared {
		r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeWarning, kcv1.ReasonSidecarNotDeclared, "VerifySidecar", "%s", msg)
	}
	kb.SetCondition(kcv1.ConditionSidecarUpToDate, metav1.ConditionFalse, kcv1.ReasonSidecarNotDeclared, msg)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonSidecarNotDeclared, msg)
}

// upgradeHeld reports whether the sidecar in w's template is kept as it is although the
// operator builds another: unless the workload allows upgrades (HoldSidecarUpgradeAnnotation
// "false"), or in verify mode, a sidecar that differs only by its image (the template's
// sidecar is what this operator would build from that image) is kept.
func (r *Reconciler) upgradeHeld(kb *kcv1.KeycloakBackup, w workload, loc dataLocation) (bool, error) {
	how := fmt.Sprintf("because it would restart PostgreSQL; the running sidecar keeps archiving. Set the workload's annotation "+
		"%s: \"false\" to allow it (one restart), or keep holding until a maintenance window", HoldSidecarUpgradeAnnotation)
	switch {
	case verifyOnly(w):
		how = "until the workload's manifests declare the new one (verify mode: print it with `kcbackup-operator sidecar-manifest`); " +
			"the running sidecar keeps archiving"
	case w.Obj.GetAnnotations()[HoldSidecarUpgradeAnnotation] == "false":
		return false, nil
	}
	old := sidecarImage(w.Template())
	if old == "" {
		return false, nil // nothing injected yet: nothing to hold
	}
	sc, err := buildSidecar(old, r.delivery(w.Obj.GetNamespace()), &kb.Spec, w.Name(), loc)
	if err != nil {
		return false, err
	}
	if before, ok := beforeSidecarOptions(&kb.Spec, sc); !injected(w.Template(), sc) && (!ok || !injected(w.Template(), before)) {
		return false, nil // the storage or the connection changed: never held
	}
	msg := fmt.Sprintf("the sidecar upgrade of %s from %s to %s is held %s", w, old, r.SidecarImage, how)
	if c := kb.Condition(kcv1.ConditionSidecarUpToDate); c == nil || c.Reason != kcv1.ReasonSidecarUpgradeHeld {
		r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, kcv1.ReasonSidecarUpgradeHeld, "InjectSidecar", "%s", msg)
	}
	kb.SetCondition(kcv1.ConditionSidecarUpToDate, metav1.ConditionFalse, kcv1.ReasonSidecarUpgradeHeld, msg)
	return true, nil
}

// hasSidecar reports whether the template has a container named like the sidecar.
func hasSidecar(t *corev1.PodTemplateSpec) bool { return sidecarImage(t) != "" }

// sidecarImage returns the image of the template's kcbackup sidecar, "" when there is none.
func sidecarImage(t *corev1.PodTemplateSpec) string {
	for _, c := range t.Spec.InitContainers {
		if c.Name == SidecarContainerName {
			return c.Image
		}
	}
	return ""
}
