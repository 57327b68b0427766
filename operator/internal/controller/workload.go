package controller

import (
	"context"
	"fmt"
	"sort"
	"strings"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Workload kinds the operator acts on.
const (
	KindDeployment  = "Deployment"
	KindStatefulSet = "StatefulSet"
)

// workload is a Deployment or a StatefulSet, seen through what the operator needs of it.
type workload struct {
	Kind string
	Obj  client.Object // *appsv1.Deployment or *appsv1.StatefulSet
}

func (w workload) Name() string { return w.Obj.GetName() }

// String names the workload as "Deployment/postgres".
func (w workload) String() string { return w.Kind + "/" + w.Obj.GetName() }

// Template returns the pod template, for reading or changing in place.
func (w workload) Template() *corev1.PodTemplateSpec {
	switch o := w.Obj.(type) {
	case *appsv1.Deployment:
		return &o.Spec.Template
	case *appsv1.StatefulSet:
		return &o.Spec.Template
	}
	panic("workload of unknown type")
}

// Selector returns the selector of the workload's pods.
func (w workload) Selector() *metav1.LabelSelector {
	switch o := w.Obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Selector
	case *appsv1.StatefulSet:
		return o.Spec.Selector
	}
	return nil
}

// Replicas returns spec.replicas, 1 when unset (the API default).
func (w workload) Replicas() int32 {
	var r *int32
	switch o := w.Obj.(type) {
	case *appsv1.Deployment:
		r = o.Spec.Replicas
	case *appsv1.StatefulSet:
		r = o.Spec.Replicas
	}
	if r == nil {
		return 1
	}
	return *r
}

func (w workload) setReplicas(n int32) {
	switch o := w.Obj.(type) {
	case *appsv1.Deployment:
		o.Spec.Replicas = &n
	case *appsv1.StatefulSet:
		o.Spec.Replicas = &n
	}
}

// claimTemplates returns a StatefulSet's volume claim templates.
func (w workload) claimTemplates() []corev1.PersistentVolumeClaim {
	if o, ok := w.Obj.(*appsv1.StatefulSet); ok {
		return o.Spec.VolumeClaimTemplates
	}
	return nil
}

// listWorkloads returns the Deployments and StatefulSets in ns whose labels match sel,
// sorted by kind and name.
func listWorkloads(ctx context.Context, c client.Reader, ns string, sel *metav1.LabelSelector) ([]workload, error) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, fmt.Errorf("parse selector: %w", err)
	}
	var out []workload
	var deps appsv1.DeploymentList
	if err := c.List(ctx, &deps, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: s}); err != nil {
		return nil, fmt.Errorf("list Deployments: %w", err)
	}
	for i := range deps.Items {
		out = append(out, workload{Kind: KindDeployment, Obj: &deps.Items[i]})
	}
	var stss appsv1.StatefulSetList
	if err := c.List(ctx, &stss, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: s}); err != nil {
		return nil, fmt.Errorf("list StatefulSets: %w", err)
	}
	for i := range stss.Items {
		out = append(out, workload{Kind: KindStatefulSet, Obj: &stss.Items[i]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// getWorkload fetches one workload by kind and name.
func getWorkload(ctx context.Context, c client.Reader, ns, kind, name string) (workload, error) {
	var obj client.Object
	switch kind {
	case KindDeployment:
		obj = &appsv1.Deployment{}
	case KindStatefulSet:
		obj = &appsv1.StatefulSet{}
	default:
		return workload{}, fmt.Errorf("unknown workload kind %q", kind)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		return workload{}, fmt.Errorf("get %s/%s: %w", kind, name, err)
	}
	return workload{Kind: kind, Obj: obj}, nil
}

// pods returns all the workload's pods, terminating ones included: a terminating
// PostgreSQL still holds its data directory.
func (w workload) pods(ctx context.Context, c client.Reader) ([]corev1.Pod, error) {
	s, err := metav1.LabelSelectorAsSelector(w.Selector())
	if err != nil || s.Empty() {
		return nil, fmt.Errorf("%s has no usable pod selector", w)
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(w.Obj.GetNamespace()), client.MatchingLabelsSelector{Selector: s}); err != nil {
		return nil, fmt.Errorf("list pods of %s: %w", w, err)
	}
	return pods.Items, nil
}

// runningPod returns a running, not terminating pod with an IP, or nil.
func runningPod(pods []corev1.Pod) *corev1.Pod {
	if r := runningPods(pods); len(r) > 0 {
		return r[0]
	}
	return nil
}

// runningPods returns the running, not terminating pods with an IP.
func runningPods(pods []corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for i := range pods {
		p := &pods[i]
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			out = append(out, p)
		}
	}
	return out
}

// selects reports whether sel selects the workload by its labels.
func selects(sel *metav1.LabelSelector, w workload) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return false
	}
	return s.Matches(labels.Set(w.Obj.GetLabels()))
}

// dataLocation is where PostgreSQL keeps its data directory in the workload.
type dataLocation struct {
	Container string // the PostgreSQL container
	DataDir   string // PGDATA
	Mount     corev1.VolumeMount
	Volume    corev1.Volume // the pod volume; for a claim template, a PVC volume naming the pod-0 claim
}

// defaultDataDir is PGDATA when neither the spec nor the container says otherwise; it is
// the official postgres image's default.
const defaultDataDir = "/var/lib/postgresql/data"

// locateData finds the PostgreSQL container, its data directory and the volume it lies on.
func locateData(w workload, containerName, dataDir string) (dataLocation, error) {
	spec := &w.Template().Spec
	var pg *corev1.Container
	for i := range spec.Containers {
		if containerName == "" || spec.Containers[i].Name == containerName {
			pg = &spec.Containers[i]
			break
		}
	}
	if pg == nil {
		return dataLocation{}, fmt.Errorf("%s has no container %q (spec.postgres.containerName)", w, containerName)
	}
	if dataDir == "" {
		for _, e := range pg.Env {
			if e.Name == "PGDATA" && e.Value != "" {
				dataDir = e.Value
			}
		}
	}
	if dataDir == "" {
		dataDir = defaultDataDir
	}
	loc := dataLocation{Container: pg.Name, DataDir: dataDir}
	best := -1
	for i, m := range pg.VolumeMounts {
		mp := strings.TrimRight(m.MountPath, "/")
		if (dataDir == mp || strings.HasPrefix(dataDir, mp+"/")) && len(mp) > best {
			best, loc.Mount = len(mp), pg.VolumeMounts[i]
		}
	}
	if best < 0 {
		return dataLocation{}, fmt.Errorf("container %q of %s mounts no volume holding the data directory %s", pg.Name, w, dataDir)
	}
	for _, v := range spec.Volumes {
		if v.Name == loc.Mount.Name {
			loc.Volume = v
			return loc, nil
		}
	}
	for _, t := range w.claimTemplates() {
		if t.Name == loc.Mount.Name {
			// A StatefulSet names its claims <template>-<statefulset>-<ordinal>; the
			// database is the single replica, ordinal 0.
			loc.Volume = corev1.Volume{Name: t.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: t.Name + "-" + w.Name() + "-0"},
			}}
			return loc, nil
		}
	}
	return dataLocation{}, fmt.Errorf("%s mounts volume %q for %s but defines no such volume", w, loc.Mount.Name, dataDir)
}

// scale sets the workload's replicas, emitting an event when it changed them.
func (r *Reconciler) scale(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, n int32) error {
	if w.Replicas() == n {
		return nil
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	from := w.Replicas()
	w.setReplicas(n)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("scale %s to %d: %w", w, n, err)
	}
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "Scaled", "Scale", "scaled %s from %d to %d replicas", w, from, n)
	return nil
}
