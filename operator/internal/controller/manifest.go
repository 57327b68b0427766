package controller

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// SidecarPatch is the strategic-merge patch that declares, in a workload's own manifests,
// the sidecar the operator would inject for kb: for verify mode (SidecarModeAnnotation),
// where Argo CD or Flux own the workload. Applied to the workload (kustomize
// patchesStrategicMerge, or copied in), its pod template carries exactly that sidecar: the
// sidecar and binary-copy init containers, the operator's volumes, PostgreSQL's mounts, and
// the hash annotation and label the operator checks.
func SidecarPatch(image string, d BinaryDelivery, kb *kcv1.KeycloakBackup, obj client.Object) (map[string]any, error) {
	var w workload
	switch o := obj.(type) {
	case *appsv1.Deployment:
		w = workload{Kind: KindDeployment, Obj: o}
	case *appsv1.StatefulSet:
		w = workload{Kind: KindStatefulSet, Obj: o}
	default:
		return nil, fmt.Errorf("the workload is a %T; want a Deployment or a StatefulSet", obj)
	}
	loc, err := locateData(w, kb.Spec.Postgres.ContainerName, kb.Spec.Postgres.DataDir)
	if err != nil {
		return nil, err
	}
	sc, err := buildSidecar(image, d, &kb.Spec, w.Name(), loc)
	if err != nil {
		return nil, err
	}
	var inits []corev1.Container
	if sc.BinaryCopy != nil {
		inits = append(inits, *sc.BinaryCopy)
	}
	inits = append(inits, sc.Container)
	pg := map[string]any{"name": sc.PostgresContainer, "volumeMounts": sc.PostgresMounts}
	if len(sc.PostgresEnv) > 0 {
		pg["env"] = sc.PostgresEnv
	}
	return map[string]any{
		"apiVersion": "apps/v1",
		"kind":       w.Kind,
		"metadata":   meta(w.Name(), w.Obj.GetNamespace(), map[string]string{SidecarModeAnnotation: SidecarModeVerify}, nil),
		"spec": map[string]any{"template": map[string]any{
			"metadata": meta("", "", map[string]string{SidecarHashAnnotation: sc.Hash()}, map[string]string{SidecarLabel: "true"}),
			"spec": map[string]any{
				"initContainers": inits,
				"containers":     []any{pg},
				"volumes":        sc.Volumes,
			},
		}},
	}, nil
}

// meta is object metadata with only what is set.
func meta(name, namespace string, annotations, labels map[string]string) map[string]any {
	m := map[string]any{"annotations": annotations}
	if name != "" {
		m["name"] = name
	}
	if namespace != "" {
		m["namespace"] = namespace
	}
	if labels != nil {
		m["labels"] = labels
	}
	return m
}
