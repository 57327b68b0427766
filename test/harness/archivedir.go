package harness

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// FileArchiveDir makes the directory of a file:// archive as the permission model of docs/cli.md (Server settings)
// says: the sidecar writes directories 0750 and objects 0640, and a setgid archive root
// owned by the restoring user's group (what fsGroup does to a pod's volume) makes every one
// of them readable by that group, including objects written later (a one-time chmod would
// miss them). restore_command runs as postgres and reads what the sidecar, as root, writes.
func FileArchiveDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // traversable on the way to the root
	if os.Geteuid() == 0 {
		g, err := user.LookupGroup("postgres")
		if err != nil {
			t.Fatalf("the archive's group postgres: %v", err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(dir, 0, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	return dir
}
