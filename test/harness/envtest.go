package harness

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Versions of the API server and etcd that test/tools/install.sh builds for envtest.
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.6.6"
)

// EnvtestAssetsDir is the directory holding the kube-apiserver and etcd binaries:
// KUBEBUILDER_ASSETS when set, else what `test/tools/install.sh envtest` builds.
func EnvtestAssetsDir() string {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d
	}
	return filepath.Join(CacheDir(), "envtest-"+KubeVersion+"-etcd-"+EtcdVersion)
}

// StartAPIServer starts a real kube-apiserver and etcd (envtest), installs the CRDs found
// in crdPaths (files or directories), and stops them when the test ends. It returns a
// configuration with administrator rights.
func StartAPIServer(t testing.TB, crdPaths ...string) *rest.Config {
	t.Helper()
	dir := EnvtestAssetsDir()
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			Require(t, "envtest", fmt.Errorf("%s not found in %s: %w", bin, dir, err))
			return nil
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     crdPaths,
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		Require(t, "envtest", fmt.Errorf("start kube-apiserver and etcd from %s: %w", dir, err))
		return nil
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Logf("stop envtest: %v", err)
		}
	})
	return cfg
}

// WriteKubeconfig writes a kubeconfig file for cfg (as returned by StartAPIServer) into a
// temporary directory of the test and returns its path, for tools such as kubectl.
func WriteKubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	server := cfg.Host
	if !strings.Contains(server, "://") {
		server = "https://" + server
	}
	b64 := base64.StdEncoding.EncodeToString
	var user strings.Builder
	if len(cfg.CertData) > 0 {
		fmt.Fprintf(&user, "    client-certificate-data: %s\n    client-key-data: %s\n", b64(cfg.CertData), b64(cfg.KeyData))
	}
	if cfg.BearerToken != "" {
		fmt.Fprintf(&user, "    token: %s\n", cfg.BearerToken)
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: envtest
  user:
%scontexts:
- name: envtest
  context:
    cluster: envtest
    user: envtest
current-context: envtest
`, server, b64(cfg.CAData), user.String())
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

// Kubectl returns the path of the kubectl that `test/tools/install.sh kubectl` builds, and
// stops the test (Require) when it is missing.
func Kubectl(t testing.TB) string {
	t.Helper()
	path := filepath.Join(CacheDir(), "kubectl-"+KubeVersion)
	if _, err := os.Stat(path); err != nil {
		Require(t, "kubectl", fmt.Errorf("%s not found (test/tools/install.sh kubectl): %w", path, err))
	}
	return path
}
