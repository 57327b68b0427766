package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

func build(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kcbackup-operator")
	if out, err := exec.Command("go", "build", "-ldflags", "-X "+buildinfo.Package+".version="+version, "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// run runs the binary with no sidecar image in the environment.
func run(bin string, args ...string) (string, int) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KCBACKUP_SIDECAR_IMAGE=")
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// TestHelpVersionAndOutOfClusterDefaults builds the binary with a release version stamped
// in: --help and --version exit 0; the sidecar image defaults to the release image of that
// version; outside a cluster, leader election without a namespace is refused naming the
// flags (the test runs outside a cluster: no service account namespace file).
func TestHelpVersionAndOutOfClusterDefaults(t *testing.T) {
	if _, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		t.Skip("running inside a pod: the out-of-cluster defaults cannot be seen here")
	}
	bin := build(t, "v9.9.9")
	if out, code := run(bin, "--version"); code != 0 || !strings.HasPrefix(out, "kcbackup-operator v9.9.9 (revision ") {
		t.Errorf("--version = %q, exit %d", out, code)
	}
	if out, code := run(bin, "--help"); code != 0 || !strings.Contains(out, "-sidecar-image") || !strings.Contains(out, "ghcr.io/kcbackup/kcbackup:v9.9.9") {
		t.Errorf("--help = %q, exit %d; want -sidecar-image defaulting to ghcr.io/kcbackup/kcbackup:v9.9.9", out, code)
	}
	out, code := run(bin)
	if code != 2 || !strings.Contains(out, "--leader-election-namespace") || !strings.Contains(out, "--leader-elect=false") {
		t.Errorf("out of cluster with leader election: %q, exit %d; want exit 2 naming --leader-election-namespace and --leader-elect=false", out, code)
	}

	dev := build(t, "dev")
	if out, code := run(dev, "--leader-elect=false"); code != 2 || !strings.Contains(out, "--sidecar-image") {
		t.Errorf("development build without a sidecar image: %q, exit %d; want exit 2 naming --sidecar-image", out, code)
	}
}
