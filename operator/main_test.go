package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelpAndVersion builds the binary with a version stamped in and checks --help and
// --version exit 0 with useful output.
func TestHelpAndVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kcbackup-operator")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.9.9", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "kcbackup-operator v9.9.9" {
		t.Errorf("--version = %q, %v", out, err)
	}
	out, err = exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--sidecar-image") && !strings.Contains(string(out), "-sidecar-image") {
		t.Errorf("--help = %q, %v; want usage naming -sidecar-image", out, err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "KCBACKUP_SIDECAR_IMAGE=")
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--sidecar-image") {
		t.Errorf("without a sidecar image: %q, %v; want an error naming the flag", out, err)
	}
}
