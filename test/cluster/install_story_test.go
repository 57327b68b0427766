//go:build cluster

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// installNS holds the second operator, installed with the Helm chart in namespaced mode,
// and the database it protects.
const installNS = "kcb-install"

// TestInstallWithChartNamespacedThenRemove: a second operator, installed from the rendered
// Helm chart with watchNamespaces: [kcb-install] (a Role there, no ClusterRole for
// workloads or Secrets), protects a small PostgreSQL StatefulSet (labelled to opt in) in
// that namespace, takes a base backup, and on deletion of the KeycloakBackup leaves no
// replication slot, no token Secret and no sidecar in the pod template or the pod.
func TestInstallWithChartNamespacedThenRemove(t *testing.T) {
	ctx := context.Background()
	dumpOnFailure(t)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := node.Kubectl(ctx, "-n", installNS, "get", "keycloakbackups,pods,statefulsets,secrets,events", "-o", "wide")
			t.Logf("namespace %s:\n%s", installNS, out)
			logs, _ := node.Kubectl(ctx, "-n", installNS, "logs", "deployment/kcbackup-operator", "--tail=80")
			t.Logf("the namespaced operator's log:\n%s", logs)
		}
	})

	// Step 1: the cluster-wide operator (from the release manifest) watches every namespace;
	// it stands aside while the namespaced one works, so one operator acts on the resource.
	scaleClusterOperator(t, ctx, 0)
	t.Cleanup(func() { scaleClusterOperator(t, context.Background(), 1) })

	// Step 2: the namespace, MinIO as the archive, and the chart rendered and applied.
	m := harness.StartMinIO(t)
	bucket := m.NewBucket(t)
	p, err := Listen(node.Net.NodeIP.String(), func(context.Context) (string, error) { return strings.TrimPrefix(m.Endpoint(), "http://"), nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if _, err := node.KubectlStdin(ctx, fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
`, installNS), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	rendered := renderChart(t, ctx)
	if out, err := node.Kubectl(ctx, "apply", "--server-side", "-f", rendered); err != nil {
		t.Fatalf("apply the rendered chart: %v\n%s", err, out)
	}
	if _, err := node.Kubectl(ctx, "-n", installNS, "rollout", "status", "deployment/kcbackup-operator", "--timeout=180s"); err != nil {
		t.Fatalf("namespaced operator rollout: %v", err)
	}
	t.Logf("namespaced operator from the chart available %.1fs after rendering", time.Since(t0).Seconds())
	if out, _ := node.Kubectl(ctx, "get", "clusterrolebindings", "-o", "name"); strings.Contains(out, "kcb-ns-kcbackup-operator\n") {
		t.Errorf("a namespaced install made a ClusterRoleBinding for the operator's rules:\n%s", out)
	}

	// Step 3: a small PostgreSQL StatefulSet, opted in, and a KeycloakBackup of it.
	name := "pg-small"
	pod := name + "-0"
	dir := node.path("volumes", "pgdata-install")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 999, 999); err != nil {
		t.Fatal(err)
	}
	objs := hostPathPVIn("kcb-install-pgdata", installNS, "data-"+pod, dir) + fmt.Sprintf(`
---
apiVersion: v1
kind: Secret
metadata: {name: keycloak-postgres, namespace: %[1]s}
stringData: {password: %[2]q}
---
apiVersion: v1
kind: Secret
metadata: {name: kcbackup-s3, namespace: %[1]s}
stringData: {AWS_ACCESS_KEY_ID: %[3]q, AWS_SECRET_ACCESS_KEY: %[4]q}
`, installNS, pgPassword, m.AccessKey(), m.SecretKey()) + postgresManifestIn(installNS, name)
	if _, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "-n", installNS, "rollout", "status", "statefulset/"+name, "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	kb := fmt.Sprintf(`apiVersion: keycloak.org/v1alpha1
kind: KeycloakBackup
metadata: {name: protect, namespace: %s}
spec:
  instanceSelector:
    matchLabels: {app.kubernetes.io/name: %s}
  storage:
    s3:
      bucket: %s
      prefix: install-story
      region: us-east-1
      endpoint: http://%s
      forcePathStyle: true
      credentialsSecret: {name: kcbackup-s3}
  postgres:
    user: postgres
    passwordSecret: {name: keycloak-postgres, key: password}
`, installNS, name, bucket, p.Addr)
	if _, err := node.KubectlStdin(ctx, kb, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	waitInstallPhase(t, ctx, "protect", "Completed", 6*time.Minute)
	t.Logf("base backup by the namespaced operator Completed in %.1fs", time.Since(t0).Seconds())
	if n := slots(t, ctx, pod); n != "1" {
		t.Fatalf("%s replication slots %q while the sidecar streams; want 1", n, "kcbackup")
	}

	// Step 4: removal. Deleting the resource takes everything out; the archive stays.
	t0 = time.Now()
	if _, err := node.Kubectl(ctx, "-n", installNS, "delete", "keycloakbackup", "protect", "--timeout=5m"); err != nil {
		t.Fatalf("delete the KeycloakBackup: %v", err)
	}
	removal := time.Since(t0)
	var left []string
	if n := slots(t, ctx, pod); n != "0" {
		left = append(left, n+" kcbackup slot(s) in pg_replication_slots")
	}
	if out, err := node.Kubectl(ctx, "-n", installNS, "get", "secret", name+"-kcbackup-token", "--ignore-not-found", "-o", "name"); err != nil || out != "" {
		left = append(left, fmt.Sprintf("token Secret %q (%v)", out, err))
	}
	if out, _ := jsonpathIn(ctx, "statefulset", name, "{.spec.template.spec.initContainers[*].name}"); strings.Contains(out, "kcbackup") {
		left = append(left, "sidecar in the pod template ("+out+")")
	}
	if out, _ := jsonpathIn(ctx, "pod", pod, "{.spec.initContainers[*].name}"); strings.Contains(out, "kcbackup") {
		left = append(left, "sidecar in the pod ("+out+")")
	}
	if len(left) > 0 {
		t.Errorf("left after removal: %s", strings.Join(left, "; "))
	}
	fmt.Printf("RESULT install: chart namespaced (Role in %s only), base backup taken, removal in %.1fs; left: %d (slot, token Secret, sidecar in template or pod)\n",
		installNS, removal.Seconds(), len(left))
}

// scaleClusterOperator sets the replicas of the operator in kcbackup-system and waits for them.
func scaleClusterOperator(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	if _, err := node.Kubectl(ctx, "-n", "kcbackup-system", "scale", "deployment/kcbackup-operator", fmt.Sprintf("--replicas=%d", n)); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "cluster-wide operator at "+fmt.Sprint(n), 3*time.Minute, nil, func() error {
		out, err := node.Kubectl(ctx, "-n", "kcbackup-system", "get", "pods", "-l", "app.kubernetes.io/name=kcbackup-operator", "-o", "name")
		if err != nil {
			return err
		}
		if got := len(strings.Fields(out)); got != n {
			return fmt.Errorf("%d operator pods", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// renderChart renders deploy/helm/kcbackup for a namespaced install in installNS with this
// run's images, as make test-deploy renders it (the helm Go module, no helm binary).
func renderChart(t *testing.T, ctx context.Context) string {
	t.Helper()
	values := map[string]any{
		"watchNamespaces": []string{installNS},
		"image": map[string]any{
			"operator": map[string]any{"repository": "localhost/kcbackup-operator", "tag": imageHash, "pullPolicy": "Never"},
			"sidecar":  map[string]any{"repository": "localhost/kcbackup", "tag": imageHash},
		},
		"pollInterval": "2s",
		// The node has no kube-proxy: the operator reaches the API server directly.
		"extraEnv": []map[string]string{
			{"name": "KUBERNETES_SERVICE_HOST", "value": node.Net.NodeIP.String()},
			{"name": "KUBERNETES_SERVICE_PORT", "value": fmt.Sprint(node.APIProxy.Port())},
		},
	}
	b, err := json.Marshal(values) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	dir := node.path("chart")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	vf, out := filepath.Join(dir, "values.json"), filepath.Join(dir, "kcbackup.yaml")
	if err := os.WriteFile(vf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/kcbackup-render", "--release", "kcb-ns", "--namespace", installNS, "--values", vf)
	cmd.Dir = "../../deploy/helm"
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	rendered, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("render the chart: %v\n%s", err, stderr)
	}
	if err := os.WriteFile(out, rendered, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitInstallPhase waits for the KeycloakBackup in installNS to reach phase want.
func waitInstallPhase(t *testing.T, ctx context.Context, name, want string, timeout time.Duration) {
	t.Helper()
	var last string
	if err := waitFor(ctx, name+" "+want, timeout, nil, func() error {
		out, err := node.Kubectl(ctx, "-n", installNS, "get", "keycloakbackup", name, "-o", "jsonpath={.status}")
		if err != nil {
			return err
		}
		var st kcbStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil && out != "" {
			return err
		}
		last = out
		if st.Phase == "Failed" {
			return fmt.Errorf("failed: %s", out)
		}
		if st.Phase != want {
			return fmt.Errorf("phase %q", st.Phase)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v; status: %s", err, last)
	}
}

// slots counts the kcbackup replication slots in PostgreSQL of pod, through psql in its
// container (over the local socket, so it works whatever the network allows).
func slots(t *testing.T, ctx context.Context, pod string) string {
	t.Helper()
	var out string
	if err := waitFor(ctx, "psql in "+pod, 2*time.Minute, nil, func() error {
		var err error
		out, err = node.Kubectl(ctx, "-n", installNS, "exec", pod, "-c", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-U", "postgres",
			"-d", "keycloak", "-tAc", "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'kcbackup'")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// jsonpathIn reads a field of an object in installNS.
func jsonpathIn(ctx context.Context, kind, name, path string) (string, error) {
	return node.Kubectl(ctx, "-n", installNS, "get", kind, name, "-o", "jsonpath="+path)
}
