package controller

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Stopping the application goes through the scale subresource, the lever every controller
// that owns replicas honours: a Keycloak resource of the Keycloak Operator maps its /scale to
// .spec.instances, and the Keycloak Operator sets its StatefulSet's replicas from that on
// every reconcile, so scaling the StatefulSet itself would be undone.
//
// The operator reads the owners generically (any kind the API server serves); the RBAC
// below covers Deployments, StatefulSets and the Keycloak Operator's Keycloak. Another owner
// kind needs get on it and get, update on its scale subresource (see docs/deployments.md).
//
// +kubebuilder:rbac:groups=apps,resources=deployments/scale;statefulsets/scale,verbs=get;update
// +kubebuilder:rbac:groups=k8s.keycloak.org,resources=keycloaks,verbs=get
// +kubebuilder:rbac:groups=k8s.keycloak.org,resources=keycloaks/scale,verbs=get;update

// maxOwnerDepth bounds the walk up the controlling owners (a cycle is an API server bug,
// not a reason to spin).
const maxOwnerDepth = 8

// scaleGVK is the kind of the scale subresource's body.
var scaleGVK = schema.GroupVersionKind{Group: "autoscaling", Version: "v1", Kind: "Scale"}

// findScaleTarget returns what stops w: the topmost controlling owner of w that has a scale
// subresource, or w itself when no owner has one. An owner that is gone, or replaced (its
// UID differs from the reference), ends the walk.
func (r *Reconciler) findScaleTarget(ctx context.Context, w workload) (kcv1.ScaledWorkload, error) {
	ns := w.Obj.GetNamespace()
	target := kcv1.ScaledWorkload{APIVersion: "apps/v1", Kind: w.Kind, Name: w.Name()}
	targetObj := w.Obj
	ref := metav1.GetControllerOf(w.Obj)
	for depth := 0; ref != nil && depth < maxOwnerDepth; depth++ {
		owner := &unstructured.Unstructured{}
		owner.SetAPIVersion(ref.APIVersion)
		owner.SetKind(ref.Kind)
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ns, Name: ref.Name}, owner)
		if apierrors.IsNotFound(err) {
			break
		}
		if err != nil {
			return target, fmt.Errorf("read %s/%s, the controlling owner of %s: %w", ref.Kind, ref.Name, w, err)
		}
		if owner.GetUID() != ref.UID {
			break
		}
		has, err := r.hasScale(ctx, owner)
		if replicasFieldUnset(err) {
			return target, &notScalableError{fmt.Sprintf("%s/%s, the controlling owner of %s, has a scale subresource but its replicas "+
				"field is not set (%v), so it can be neither read nor set through /scale: set it explicitly (for a Keycloak, "+
				"spec.instances: the number of instances it runs now, 1 when unset)", ref.Kind, ref.Name, w, err)}
		}
		if err != nil {
			return target, fmt.Errorf("read the scale of %s/%s, the controlling owner of %s: %w", ref.Kind, ref.Name, w, err)
		}
		if has {
			target = kcv1.ScaledWorkload{APIVersion: ref.APIVersion, Kind: ref.Kind, Name: ref.Name}
			targetObj = owner
		}
		ref = metav1.GetControllerOf(owner)
	}
	if target.Kind != w.Kind || target.Name != w.Name() {
		target.Selected = []kcv1.WorkloadReference{{Kind: w.Kind, Name: w.Name()}}
	}
	// What the restore scales must be opted in itself: a label on the Keycloak resource, not
	// only on the StatefulSet it controls.
	if !r.optedIn(targetObj) {
		return target, &notOptedInError{what: target.Kind + "/" + target.Name}
	}
	n, err := r.readScale(ctx, ns, target)
	if err != nil {
		return target, err
	}
	target.Replicas = n
	return target, nil
}

// notScalableError says why an application cannot be stopped through its scale
// subresource; a restore meeting it is refused before anything is touched.
type notScalableError struct{ msg string }

func (e *notScalableError) Error() string { return e.msg }

// notOptedInError says that what a restore would scale does not carry OptInLabel; a
// restore meeting it is refused before anything is touched.
type notOptedInError struct{ what string }

func (e *notOptedInError) Error() string { return e.what + " is not opted in" }

// replicasFieldUnset reports whether err is the API server's answer to /scale on a custom
// resource whose specReplicasPath field is absent ("the spec replicas field ... does not
// exist"): GET and PUT both fail until the field is set.
func replicasFieldUnset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "spec replicas field") && strings.Contains(err.Error(), "does not exist")
}

// hasScale reports whether obj's resource serves a scale subresource: GET /scale answers,
// where a resource without one answers NotFound (obj itself was just read).
func (r *Reconciler) hasScale(ctx context.Context, obj *unstructured.Unstructured) (bool, error) {
	sc := newScale()
	err := r.Client.SubResource("scale").Get(ctx, obj, sc)
	if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
		return false, nil
	}
	return err == nil, err
}

// scaleObject returns the object whose /scale t names.
func scaleObject(ns string, t kcv1.ScaledWorkload) *unstructured.Unstructured {
	obj := &unstructured.Unstructured{}
	obj.SetAPIVersion(orDefault(t.APIVersion, "apps/v1"))
	obj.SetKind(t.Kind)
	obj.SetNamespace(ns)
	obj.SetName(t.Name)
	return obj
}

func newScale() *unstructured.Unstructured {
	sc := &unstructured.Unstructured{}
	sc.SetGroupVersionKind(scaleGVK)
	return sc
}

// getScale reads t's scale subresource.
func (r *Reconciler) getScale(ctx context.Context, ns string, t kcv1.ScaledWorkload) (*unstructured.Unstructured, error) {
	sc := newScale()
	if err := r.Client.SubResource("scale").Get(ctx, scaleObject(ns, t), sc); err != nil {
		return nil, fmt.Errorf("read the scale of %s: %w", describeScaled(t), err)
	}
	return sc, nil
}

// readScale returns t's spec.replicas as its scale subresource reports it.
func (r *Reconciler) readScale(ctx context.Context, ns string, t kcv1.ScaledWorkload) (int32, error) {
	sc, err := r.getScale(ctx, ns, t)
	if err != nil {
		return 0, err
	}
	n, _, err := unstructured.NestedInt64(sc.Object, "spec", "replicas")
	if err != nil {
		return 0, fmt.Errorf("the scale of %s: spec.replicas: %w", describeScaled(t), err)
	}
	return int32(n), nil
}

// setScale sets t's replicas through its scale subresource, emitting an event when it
// changed them. The update carries the scale's resourceVersion: a concurrent change makes
// it fail (Conflict) and the step runs again.
func (r *Reconciler) setScale(ctx context.Context, kb *kcv1.KeycloakBackup, t kcv1.ScaledWorkload, n int32) error {
	sc, err := r.getScale(ctx, kb.Namespace, t)
	if err != nil {
		return err
	}
	from, _, err := unstructured.NestedInt64(sc.Object, "spec", "replicas")
	if err != nil {
		return fmt.Errorf("the scale of %s: spec.replicas: %w", describeScaled(t), err)
	}
	if from == int64(n) {
		return nil
	}
	if err := unstructured.SetNestedField(sc.Object, int64(n), "spec", "replicas"); err != nil {
		return err
	}
	obj := scaleObject(kb.Namespace, t)
	if err := r.Client.SubResource("scale").Update(ctx, obj, client.WithSubResourceBody(sc)); err != nil {
		return fmt.Errorf("scale %s from %d to %d: %w", describeScaled(t), from, n, err)
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "Scaled", "Scale", "scaled %s from %d to %d replicas through its scale subresource", describeScaled(t), from, n)
	return nil
}

// describeScaled names a scaled resource, and the selected workloads it controls.
func describeScaled(t kcv1.ScaledWorkload) string {
	s := t.Kind + "/" + t.Name
	if len(t.Selected) == 0 {
		return s
	}
	var sel []string
	for _, w := range t.Selected {
		sel = append(sel, w.Kind+"/"+w.Name)
	}
	return s + " (controlling " + strings.Join(sel, ", ") + ")"
}

// applicationTargets finds what stops each application workload applicationSelector
// matches, PostgreSQL's own excepted: one entry per scaled resource, the selected
// workloads it controls merged.
func (r *Reconciler) applicationTargets(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) ([]kcv1.ScaledWorkload, error) {
	if kb.Spec.ApplicationSelector == nil {
		return nil, nil
	}
	apps, err := listWorkloads(ctx, r.Client, kb.Namespace, kb.Spec.ApplicationSelector)
	if err != nil {
		return nil, err
	}
	var out []kcv1.ScaledWorkload
	for _, a := range apps {
		if a.Kind == db.Kind && a.Name() == db.Name() {
			continue
		}
		t, err := r.findScaleTarget(ctx, a)
		if err != nil {
			return nil, err
		}
		merged := false
		for i := range out {
			if out[i].APIVersion == t.APIVersion && out[i].Kind == t.Kind && out[i].Name == t.Name {
				out[i].Selected = append(out[i].Selected, t.Selected...)
				merged = true
			}
		}
		if !merged {
			out = append(out, t)
		}
	}
	return out, nil
}

// applicationPodsGone reports whether every workload a scaled application stands for has
// no pod left. A workload deleted meanwhile has none.
func (r *Reconciler) applicationPodsGone(ctx context.Context, kb *kcv1.KeycloakBackup, a kcv1.ScaledWorkload) (bool, error) {
	sel := a.Selected
	if len(sel) == 0 {
		sel = []kcv1.WorkloadReference{{Kind: a.Kind, Name: a.Name}}
	}
	for _, ref := range sel {
		w, err := getWorkload(ctx, r.Client, kb.Namespace, ref.Kind, ref.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		pods, err := w.pods(ctx, r.Client)
		if err != nil {
			return false, err
		}
		if len(pods) > 0 {
			return false, nil
		}
	}
	return true, nil
}
