//go:build cluster

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// keycloakStatefulSet is the StatefulSet the Keycloak Operator stand-in makes for Keycloak
// "kc": the Keycloak stand-in image, labelled like the rest of Keycloak
// (app.kubernetes.io/name=keycloak, so one applicationSelector selects it and the
// Deployment), its pods labelled apart.
func keycloakStatefulSet(owner metav1.OwnerReference, replicas int32) *appsv1.StatefulSet {
	podLabels := map[string]string{"app": "kc"}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "kc", Namespace: ns, OwnerReferences: []metav1.OwnerReference{owner},
			Labels: map[string]string{"app.kubernetes.io/name": "keycloak", "app.kubernetes.io/managed-by": "keycloak-operator", "app.kubernetes.io/instance": "kc",
				"kcbackup.keycloak.org/opt-in": "true"}},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(replicas),
			ServiceName:         "kc",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: podLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](5),
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{{
						Name: "keycloak", Image: "localhost/kcbackup-test/keycloak-standin:1", ImagePullPolicy: corev1.PullNever,
						Env: []corev1.EnvVar{{Name: "KEYCLOAK_DB_URL",
							Value: fmt.Sprintf("postgres://postgres:%s@%s/keycloak?sslmode=disable", pgPassword, dbProxy.Addr)}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/ready", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 2},
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							RunAsNonRoot: ptr.To(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					}},
				},
			},
		},
	}
}

// restoreWithKeycloakOperator: Keycloak run by (a stand-in of) the Keycloak Operator, which
// sets its StatefulSet's replicas from the Keycloak resource on every reconcile. The
// restore's applicationSelector matches that StatefulSet and the Keycloak Deployment; the
// operator scales the Keycloak resource 2 -> 0 -> 2 through its /scale (and the Deployment
// 1 -> 0 -> 1), never the StatefulSet, and a dropped table comes back.
func restoreWithKeycloakOperator(t *testing.T, ctx context.Context) {
	// Step 1: the CRD, a Keycloak with 2 instances, and the stand-in operator making them run.
	if out, err := node.Kubectl(ctx, "apply", "-f", "keycloak-operator/crd"); err != nil {
		t.Fatalf("install the Keycloak CRD: %v\n%s", err, out)
	}
	if _, err := node.Kubectl(ctx, "wait", "--for=condition=Established", "crd/keycloaks.k8s.keycloak.org", "--timeout=60s"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.KubectlStdin(ctx, fmt.Sprintf(`apiVersion: k8s.keycloak.org/v2beta1
kind: Keycloak
metadata:
  name: kc
  namespace: %s
  # What a restore scales opts in itself, not only the StatefulSet it controls.
  labels: {kcbackup.keycloak.org/opt-in: "true"}
spec: {instances: 2}
`, ns), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	op, err := NewKeycloakOperator(node.Kubeconfig, ns, "kc")
	if err != nil {
		t.Fatal(err)
	}
	opCtx, stop := context.WithCancel(ctx)
	defer stop()
	go op.Run(opCtx, keycloakStatefulSet)
	waitKeycloakReady := func(what string) {
		t.Helper()
		if err := waitFor(ctx, what, 3*time.Minute, nil, func() error {
			r, _ := jsonpath(ctx, "statefulset", "kc", "{.status.readyReplicas}")
			i, _ := jsonpath(ctx, "keycloaks.k8s.keycloak.org", "kc", "{.status.instances}")
			if r != "2" || i != "2" {
				return fmt.Errorf("StatefulSet kc ready replicas %q, Keycloak kc status.instances %q (stand-in: %v)", r, i, op.Err())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitKeycloakReady("Keycloak kc with 2 ready instances")

	// Step 2: a table, dropped after the target.
	conn := db(t, ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE realm_marker AS SELECT g AS id FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	target := pastTarget(t, ctx, conn)
	if _, err := conn.Exec(ctx, "DROP TABLE realm_marker"); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, ctx, conn, pgName+"-0")
	waitWindowCovers(t, ctx, pgName, pgName+"-0", target)
	_ = conn.Close(ctx)

	// Step 3: the restore; Keycloak's pods must be gone before PostgreSQL stops.
	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, kcb("restore-kc-operator", fmt.Sprintf(`  applicationSelector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  restoreTo: %q
`, target.Format(time.RFC3339))), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, ctx, "restore-kc-operator", "Restored", 10*time.Minute, "Failed")
	took := time.Since(t0)
	waitKeycloakReady("Keycloak kc back with 2 ready instances")

	// Step 4: what the operator recorded, what the stand-in saw, and the table.
	out, err := jsonpath(ctx, "keycloakbackup", "restore-kc-operator", "{.status.restore.applications}")
	if err != nil {
		t.Fatal(err)
	}
	var apps []struct {
		APIVersion, Kind, Name string
		Replicas               int32
		Selected               []struct{ Kind, Name string }
	}
	if err := json.Unmarshal([]byte(out), &apps); err != nil {
		t.Fatalf("status.restore.applications %q: %v", out, err)
	}
	var found []string
	for _, a := range apps {
		found = append(found, fmt.Sprintf("%s/%s=%d%v", a.Kind, a.Name, a.Replicas, a.Selected))
	}
	slices.Sort(found)
	if want := []string{"Deployment/keycloak=1[]", "Keycloak/kc=2[{StatefulSet kc}]"}; !slices.Equal(found, want) {
		t.Errorf("status.restore.applications = %v, want %v", found, want)
	}
	instances, replicas, overridden := op.Summary()
	if fmt.Sprint(instances) != "[2 0 2]" || fmt.Sprint(replicas) != "[2 0 2]" || overridden != 0 {
		t.Errorf("the Keycloak Operator stand-in saw instances %v, applied replicas %v, found its StatefulSet scaled by someone else %d times; "+
			"want [2 0 2], [2 0 2], 0", instances, replicas, overridden)
	}
	conn = db(t, ctx)
	defer conn.Close(ctx)
	var rows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM realm_marker").Scan(&rows); err != nil || rows != 1000 {
		t.Errorf("realm_marker after the restore: %d rows (%v), want 1000", rows, err)
	}
	if r, _ := jsonpath(ctx, "deployment", "keycloak", "{.spec.replicas}"); r != "1" {
		t.Errorf("Deployment keycloak replicas %s after the restore, want 1", r)
	}
	fmt.Printf("RESULT keycloak-operator: Keycloak instances %s, its StatefulSet's replicas %s set only by the Keycloak Operator stand-in "+
		"(%d changes by anyone else), Deployment keycloak 1 -> 0 -> 1; restored to %s in %.1fs, timeline %d -> %d; dropped table back with %d rows; recorded %s\n",
		arrows(instances), arrows(replicas), overridden, target.Format(time.RFC3339), took.Seconds(), st.Restore.PreviousTimeline, st.Restore.Timeline,
		rows, strings.Join(found, ", "))
}

// arrows writes a sequence as "2 -> 0 -> 2".
func arrows[T any](xs []T) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprint(x))
	}
	return strings.Join(s, " -> ")
}
