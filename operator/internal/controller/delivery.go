package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=pods,verbs=create

// DeliverByProbe decides the delivery per namespace, by what the API server admits there:
// the first time a namespace's workload is injected, the operator asks the API server to
// create (server-side dry run: admission runs, nothing is stored) a pod of that workload's
// template with the sidecar injected by image volume. Admitted: image volumes. Refused, by
// any admission (an admission policy or webhook refusing image volumes, an API server with
// the ImageVolume feature off, which drops the volume's source and finds it invalid), or not
// allowed to ask (RBAC): an init container, which every cluster admits. The choice is kept for the operator's
// lifetime, so a namespace's pods are never rolled back and forth.
const DeliverByProbe BinaryDelivery = "probe"

// deliveries holds the delivery decided for each namespace (DeliverByProbe).
type deliveries struct {
	mu   sync.Mutex
	byNS map[string]BinaryDelivery
}

// delivery is how the binary reaches PostgreSQL and the restore Job in namespace ns: the
// configured way, or with DeliverByProbe the one decided for ns (decideDelivery runs in
// ensureSidecar, before any template or Job is built). A namespace not decided yet (it
// cannot happen after ensureSidecar) gets an init container, which works everywhere.
func (r *Reconciler) delivery(ns string) BinaryDelivery {
	if r.BinaryDelivery != DeliverByProbe {
		return r.BinaryDelivery
	}
	r.deliveries.mu.Lock()
	defer r.deliveries.mu.Unlock()
	if d, ok := r.deliveries.byNS[ns]; ok {
		return d
	}
	return DeliverByInitContainer
}

// decideDelivery decides, once per namespace, how the binary reaches w's pods (see
// DeliverByProbe). An error is one to retry (the API server did not answer): nothing is
// decided then.
func (r *Reconciler) decideDelivery(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, loc dataLocation) error {
	if r.BinaryDelivery != DeliverByProbe {
		return nil
	}
	ns := w.Obj.GetNamespace()
	r.deliveries.mu.Lock()
	_, done := r.deliveries.byNS[ns]
	r.deliveries.mu.Unlock()
	if done {
		return nil
	}
	pod, err := r.probePod(kb, w, loc)
	if err != nil {
		return err
	}
	d, why := DeliverByImageVolume, "the API server admits a pod of "+w.String()+" with the sidecar image as an image volume (server-side dry run)"
	if err := r.Client.Create(ctx, pod, client.DryRunAll); err != nil {
		switch {
		case refusedByAdmission(err):
			d, why = DeliverByInitContainer, "the API server refused a pod of "+w.String()+" with the sidecar image as an image volume (server-side dry run): "+
				lastLine(err.Error(), 512)
		case apierrors.IsForbidden(err):
			// Without the permission to ask, the way every cluster admits.
			d, why = DeliverByInitContainer, "the operator may not create pods in "+ns+" (RBAC), so it cannot ask the API server whether image "+
				"volumes are admitted (give its ClusterRole create on pods, as deploy/rbac does): "+lastLine(err.Error(), 512)
		default:
			return fmt.Errorf("ask the API server whether namespace %s admits image volumes (a dry-run pod of %s): %w", ns, w, err)
		}
	}
	r.deliveries.mu.Lock()
	if r.deliveries.byNS == nil {
		r.deliveries.byNS = map[string]BinaryDelivery{}
	}
	r.deliveries.byNS[ns] = d
	r.deliveries.mu.Unlock()
	log.FromContext(ctx).Info("kcbackup binary delivery chosen", "namespace", ns, "delivery", d, "why", why)
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "BinaryDeliveryChosen", "InjectSidecar",
		"the kcbackup binary reaches the pods of namespace %s by %s: %s", ns, d, why)
	return nil
}

// probePod is the pod w's controller would create once the sidecar is injected by image
// volume: the template, the sidecar, and (a StatefulSet) the claims of ordinal 0, so that
// the API server validates it as it would the real one.
func (r *Reconciler) probePod(kb *kcv1.KeycloakBackup, w workload, loc dataLocation) (*corev1.Pod, error) {
	sc, err := buildSidecar(r.SidecarImage, DeliverByImageVolume, &kb.Spec, w.Name(), loc)
	if err != nil {
		return nil, err
	}
	t := w.Template().DeepCopy()
	inject(t, sc)
	have := map[string]bool{}
	for _, v := range t.Spec.Volumes {
		have[v.Name] = true
	}
	for _, c := range w.claimTemplates() {
		if !have[c.Name] {
			t.Spec.Volumes = append(t.Spec.Volumes, corev1.Volume{Name: c.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c.Name + "-" + w.Name() + "-0"}}})
		}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: w.Name() + "-kcbackup-probe-",
			Namespace:    w.Obj.GetNamespace(),
			Labels:       t.Labels,
			Annotations:  t.Annotations,
		},
		Spec: t.Spec,
	}, nil
}

// refusedByAdmission reports whether the API server refused the dry-run pod itself
// (validation, an admission policy or webhook, Pod Security), as opposed to not answering
// or the operator lacking the permission to ask (RBAC: "cannot create resource").
func refusedByAdmission(err error) bool {
	switch {
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return true
	case apierrors.IsForbidden(err):
		return !strings.Contains(err.Error(), "cannot create resource")
	}
	return false
}
