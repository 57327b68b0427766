package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
)

// The operator's init container (--binary-delivery init-container) runs `kcbackup
// copy-binary` under whatever user ID the cluster assigns, as OpenShift's restricted-v2 does
// from the namespace's range: the copy is an executable that runs, mode 0555, with no
// temporary file left; a relative or missing destination is refused by name.
func TestCopyBinaryRunsUnderAnAssignedUIDAndLeavesAnExecutable(t *testing.T) {
	const uid, gid = 1000650000, 0 // OpenShift: a UID from the namespace's range, group root
	bin := harness.KcbackupBinary(t)
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	empty := filepath.Join(dir, "emptydir")
	if err := os.Mkdir(empty, 0o775); err != nil {
		t.Fatal(err)
	}
	os.Chown(empty, uid, gid)
	// The image's binary, readable by anyone (as in the image).
	src := filepath.Join(dir, "kcbackup")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(src, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dest := filepath.Join(empty, "kcbackup")
	if out, err := run("copy-binary", dest); err != nil {
		t.Fatalf("copy-binary as uid %d: %v\n%s", uid, err, out)
	}
	st, err := os.Stat(dest)
	if err != nil || st.Mode().Perm() != 0o555 {
		t.Fatalf("the copy: %v, %v; want mode 0555", st, err)
	}
	if out, err := exec.Command(dest, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "kcbackup") {
		t.Fatalf("the copied binary does not run: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 1 {
		t.Fatalf("the directory holds %d entries; want only the binary", len(entries))
	}
	for _, bad := range []struct{ dest, want string }{
		{"relative/kcbackup", "absolute path"},
		{filepath.Join(dir, "missing", "kcbackup"), "must exist"},
	} {
		if out, err := run("copy-binary", bad.dest); err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("copy-binary %s: %v %q; want a refusal naming %q", bad.dest, err, out, bad.want)
		}
	}
}
