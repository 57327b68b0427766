package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// keycloakGVR is the Keycloak Operator's Keycloak resource (the CRD stand-in in
// keycloak-operator/crd).
var keycloakGVR = schema.GroupVersionResource{Group: "k8s.keycloak.org", Version: "v2beta1", Resource: "keycloaks"}

// KeycloakOperator stands in for the Keycloak Operator, in the test process: for one
// Keycloak resource it owns a StatefulSet and, on every reconcile (twice a second), sets the
// StatefulSet's replicas from .spec.instances, undoing anyone else's change, and reports
// the ready replicas in .status.instances, as the real operator does.
type KeycloakOperator struct {
	Namespace, Name string

	dyn  dynamic.Interface
	kube kubernetes.Interface

	mu sync.Mutex
	// Instances is every distinct .spec.instances seen, in order.
	Instances []int64
	// Replicas is every distinct StatefulSet spec.replicas the stand-in applied, in order.
	Replicas []int32
	// Overridden counts the times the StatefulSet's replicas differed from what the
	// stand-in last applied: someone else scaled the StatefulSet.
	Overridden int
	lastErr    error
}

// NewKeycloakOperator connects to the node's API server as admin.
func NewKeycloakOperator(kubeconfig, namespace, name string) (*KeycloakOperator, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &KeycloakOperator{Namespace: namespace, Name: name, dyn: dyn, kube: kube}, nil
}

// Run reconciles until ctx ends; sts builds the StatefulSet it creates.
func (o *KeycloakOperator) Run(ctx context.Context, sts func(owner metav1.OwnerReference, replicas int32) *appsv1.StatefulSet) {
	for {
		err := o.reconcile(ctx, sts)
		o.mu.Lock()
		o.lastErr = err
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Err is the last reconcile's error.
func (o *KeycloakOperator) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastErr
}

// Summary describes what the stand-in saw.
func (o *KeycloakOperator) Summary() (instances []int64, replicas []int32, overridden int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]int64(nil), o.Instances...), append([]int32(nil), o.Replicas...), o.Overridden
}

func (o *KeycloakOperator) reconcile(ctx context.Context, build func(owner metav1.OwnerReference, replicas int32) *appsv1.StatefulSet) error {
	kc, err := o.dyn.Resource(keycloakGVR).Namespace(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get Keycloak %s: %w", o.Name, err)
	}
	instances, _, err := unstructured.NestedInt64(kc.Object, "spec", "instances")
	if err != nil {
		return err
	}
	o.mu.Lock()
	if n := len(o.Instances); n == 0 || o.Instances[n-1] != instances {
		o.Instances = append(o.Instances, instances)
	}
	o.mu.Unlock()
	want := int32(instances)
	owner := metav1.OwnerReference{APIVersion: keycloakGVR.GroupVersion().String(), Kind: "Keycloak", Name: kc.GetName(),
		UID: kc.GetUID(), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
	stss := o.kube.AppsV1().StatefulSets(o.Namespace)
	sts, err := stss.Get(ctx, o.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		sts, err = stss.Create(ctx, build(owner, want), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create StatefulSet %s: %w", o.Name, err)
		}
		o.applied(want)
	case err != nil:
		return err
	case sts.Spec.Replicas == nil || *sts.Spec.Replicas != want:
		o.mu.Lock()
		if n := len(o.Replicas); n > 0 && sts.Spec.Replicas != nil && *sts.Spec.Replicas != o.Replicas[n-1] {
			o.Overridden++
		}
		o.mu.Unlock()
		sts.Spec.Replicas = ptr.To(want)
		if sts, err = stss.Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("set StatefulSet %s replicas to %d: %w", o.Name, want, err)
		}
		o.applied(want)
	}
	ready := int64(sts.Status.ReadyReplicas)
	if cur, _, _ := unstructured.NestedInt64(kc.Object, "status", "instances"); cur == ready && kc.Object["status"] != nil {
		return nil
	}
	_ = unstructured.SetNestedField(kc.Object, ready, "status", "instances")
	_ = unstructured.SetNestedField(kc.Object, "app="+o.Name, "status", "selector")
	if _, err := o.dyn.Resource(keycloakGVR).Namespace(o.Namespace).UpdateStatus(ctx, kc, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("update Keycloak %s status: %w", o.Name, err)
	}
	return nil
}

func (o *KeycloakOperator) applied(n int32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if k := len(o.Replicas); k == 0 || o.Replicas[k-1] != n {
		o.Replicas = append(o.Replicas, n)
	}
}
