package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kcbackup/kcbackup/test/harness"
)

// TestEnvtestReleaseManifestsApply runs deploy/release/release.sh (without the images) for the
// chart's version, as make release does, and applies the install and monitoring manifests
// it writes with `kubectl apply --dry-run=server` against a real API server: they must
// apply, pin both images to the version and name no :latest image.
func TestEnvtestReleaseManifestsApply(t *testing.T) {
	var chart struct{ Version string }
	b, err := os.ReadFile("helm/kcbackup/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &chart); err != nil || chart.Version == "" {
		t.Fatalf("helm/kcbackup/Chart.yaml: version %q, %v", chart.Version, err)
	}
	tag := "v" + chart.Version
	dist := t.TempDir()
	rel := exec.Command("../deploy/release/release.sh", chart.Version)
	rel.Env = append(os.Environ(), "IMAGES=0", "DIST="+dist)
	if out, err := rel.CombinedOutput(); err != nil {
		t.Fatalf("deploy/release/release.sh %s: %v\n%s", chart.Version, err, out)
	}
	for _, bin := range []string{"kcbackup", "kcbackup-operator", "kubectl-kcbackup"} {
		if st, err := os.Stat(filepath.Join(dist, bin+"-"+tag+"-linux-amd64")); err != nil || st.Mode()&0o111 == 0 {
			t.Errorf("the release has no executable %s-%s-linux-amd64: %v", bin, tag, err)
		}
	}

	kubectl := harness.Kubectl(t)
	cfg := harness.StartAPIServer(t, prometheusOperatorCRDs(t))
	kubeconfig := harness.WriteKubeconfig(t, cfg)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A server-side dry run creates nothing, so the namespace the objects land in must exist.
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kcbackup-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		file string
		want []string
	}{
		{"kcbackup-" + tag + ".yaml", []string{
			"customresourcedefinition.apiextensions.k8s.io/keycloakbackups.keycloak.org",
			"clusterrole.rbac.authorization.k8s.io/kcbackup-operator",
			"deployment.apps/kcbackup-operator",
		}},
		{"kcbackup-monitoring-" + tag + ".yaml", []string{
			"podmonitor.monitoring.coreos.com/kcbackup-sidecar",
			"prometheusrule.monitoring.coreos.com/kcbackup",
			"configmap/kcbackup-grafana-dashboard",
		}},
	} {
		path := filepath.Join(dist, m.file)
		out, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", path).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl apply --server-side --dry-run=server -f %s: %v\n%s", m.file, err, out)
		}
		for _, w := range m.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s did not apply %s:\n%s", m.file, w, out)
			}
		}
	}
	manifest, err := os.ReadFile(filepath.Join(dist, "kcbackup-"+tag+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image: ghcr.io/kcbackup/kcbackup-operator:" + tag, "value: ghcr.io/kcbackup/kcbackup:" + tag} {
		if !strings.Contains(string(manifest), want) {
			t.Errorf("the install manifest lacks %q", want)
		}
	}
	if strings.Contains(string(manifest), ":latest") {
		t.Error("the install manifest names a :latest image")
	}
}
