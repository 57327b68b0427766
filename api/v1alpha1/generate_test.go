package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedFilesAreUpToDate regenerates the deepcopy functions, the CRD and the RBAC
// role into a temporary directory and fails when the committed copies differ: run
// `make generate` (operator/hack/generate.sh) after changing a type or a marker.
func TestGeneratedFilesAreUpToDate(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "operator", "hack", "generate.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("operator/hack/generate.sh: %v\n%s", err, b)
	}
	for _, f := range []string{
		"api/v1alpha1/zz_generated.deepcopy.go",
		"deploy/crd/keycloak.org_keycloakbackups.yaml",
		"deploy/rbac/role.yaml",
	} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatalf("generated %s: %v", f, err)
		}
		got, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatalf("committed %s: %v", f, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make generate (operator/hack/generate.sh)", f)
		}
	}
}
