package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kcbackup/kcbackup/test/harness"
)

// prometheusOperatorVersion is the release whose CRDs (PodMonitor, ServiceMonitor,
// PrometheusRule) the monitoring objects are checked against.
const prometheusOperatorVersion = "v0.85.0"

// prometheusOperatorCRDs copies the CRDs the monitoring objects need out of the
// prometheus-operator Go module (fetched through the module proxy) into a temp directory.
func prometheusOperatorCRDs(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json",
		"github.com/prometheus-operator/prometheus-operator@"+prometheusOperatorVersion).Output()
	if err != nil {
		harness.Require(t, "prometheus-operator CRDs", fmt.Errorf("go mod download: %w", err))
		return ""
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		harness.Require(t, "prometheus-operator CRDs", fmt.Errorf("go mod download answered %q: %v", out, err))
		return ""
	}
	dst := t.TempDir()
	for _, kind := range []string{"podmonitors", "servicemonitors", "prometheusrules"} {
		name := "monitoring.coreos.com_" + kind + ".yaml"
		if err := copyFile(filepath.Join(mod.Dir, "example", "prometheus-operator-crd", name), filepath.Join(dst, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestEnvtestDeployAppliesWithServerDryRun applies the kustomize base and every example
// with `kubectl apply --dry-run=server` against a real API server, which runs the full
// admission chain (schemas, CEL rules, RBAC object validation) without persisting.
func TestEnvtestDeployAppliesWithServerDryRun(t *testing.T) {
	kubectl := harness.Kubectl(t)
	promCRDs := prometheusOperatorCRDs(t)
	cfg := harness.StartAPIServer(t, "crd", promCRDs)
	kubeconfig := harness.WriteKubeconfig(t, cfg)

	// A server-side dry run does not create namespaces, so the ones the objects land in
	// must exist.
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"kcbackup-system", "keycloak"} {
		if _, err := cs.CoreV1().Namespaces().Create(context.Background(),
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	out := run("apply", "--dry-run=server", "-k", ".")
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/keycloakbackups.keycloak.org",
		"clusterrole.rbac.authorization.k8s.io/kcbackup-operator",
		"deployment.apps/kcbackup-operator",
		"podmonitor.monitoring.coreos.com/kcbackup-sidecar",
		"prometheusrule.monitoring.coreos.com/kcbackup",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply -k deploy/ did not apply %s:\n%s", want, out)
		}
	}

	examples, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(examples) < 5 {
		t.Fatalf("examples: %v, %v; want manual, scheduled and restore examples for S3 and volume", examples, err)
	}
	for _, ex := range examples {
		out := run("apply", "--dry-run=server", "-n", "keycloak", "-f", ex)
		if !strings.Contains(out, "keycloakbackup.keycloak.org/") {
			t.Errorf("%s: no KeycloakBackup applied:\n%s", ex, out)
		}
	}
}

// TestOperatorDeploymentIsHardened checks the operator runs non-root, with a read-only root
// filesystem, no privilege escalation, and resource requests.
func TestOperatorDeploymentIsHardened(t *testing.T) {
	raw, err := os.ReadFile("manager/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(raw, &d); err != nil {
		t.Fatalf("manager/deployment.yaml: %v", err)
	}
	ps := d.Spec.Template.Spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot {
		t.Error("the pod does not require runAsNonRoot")
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: root filesystem is not read-only", c.Name)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: privilege escalation allowed", c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s: no cpu and memory requests", c.Name)
		}
	}
}
