package controller_test

import (
	"fmt"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/test/harness"
)

// TestEnvtestBinaryDeliveryFollowsWhatTheNamespaceAdmits: with the delivery decided per
// namespace (auto on Kubernetes 1.36 or later), a namespace that admits image volumes gets
// one, and a namespace where a ValidatingAdmissionPolicy refuses them gets the init
// container, both on the real API server's admission.
func TestEnvtestBinaryDeliveryFollowsWhatTheNamespaceAdmits(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd", "../../../test/cluster/keycloak-operator/crd")
	probe := func(r *kccontroller.Reconciler) { r.BinaryDelivery = kccontroller.DeliverByProbe }
	delivered := func(e *env) (string, string) {
		d := e.deployment("postgres")
		if sidecarOf(d) == nil {
			return "", "no sidecar yet"
		}
		var init, image bool
		for _, c := range d.Spec.Template.Spec.InitContainers {
			init = init || c.Name == kccontroller.BinaryInitContainerName
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			image = image || v.Image != nil
		}
		switch {
		case init && !image:
			return "init-container", ""
		case image && !init:
			return "image-volume", ""
		}
		return "", fmt.Sprintf("init container %t, image volume %t", init, image)
	}

	t.Run("ImageVolumeWhereAdmitted", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, cfg, probe)
		e.create(postgresDeployment("postgres", dbLabels))
		e.create(volumeBackup("once"))
		e.eventually("the sidecar injected with an image volume", func() (bool, string) {
			got, why := delivered(e)
			return got == "image-volume", got + why
		})
		e.waitEvent("once", "BinaryDeliveryChosen")
	})

	t.Run("InitContainerWhereAPolicyRefusesImageVolumes", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, cfg, probe)
		name := "no-image-volumes-" + e.ns
		for _, obj := range []client.Object{
			&admissionv1.ValidatingAdmissionPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: admissionv1.ValidatingAdmissionPolicySpec{
					FailurePolicy: ptr.To(admissionv1.Fail),
					MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
						RuleWithOperations: admissionv1.RuleWithOperations{
							Operations: []admissionv1.OperationType{admissionv1.Create},
							Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
						}}}},
					Validations: []admissionv1.Validation{{
						Expression: "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.image))",
						Message:    "no image volumes on this cluster",
					}},
				},
			},
			&admissionv1.ValidatingAdmissionPolicyBinding{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
					PolicyName:        name,
					ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
					MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
						MatchLabels: map[string]string{"kubernetes.io/metadata.name": e.ns}}},
				},
			},
		} {
			if err := e.c.Create(e.ctx, obj); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.c.Delete(e.ctx, obj) })
		}
		// The policy is enforced a moment after it is created.
		e.eventually("the policy refusing an image volume", func() (bool, string) {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "check-", Namespace: e.ns},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}},
					Volumes: []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "busybox"}}}}},
			}
			err := e.c.Create(e.ctx, p, client.DryRunAll)
			return err != nil, fmt.Sprint(err)
		})
		e.create(postgresDeployment("postgres", dbLabels))
		e.create(volumeBackup("once"))
		e.eventually("the sidecar injected with the init container", func() (bool, string) {
			got, why := delivered(e)
			return got == "init-container", got + why
		})
		e.waitEvent("once", "BinaryDeliveryChosen")
	})
}
