package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
