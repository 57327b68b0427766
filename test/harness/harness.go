// Package harness starts the real components the tests need: PostgreSQL clusters, a MinIO
// server and a Kubernetes API server (envtest). Each component is started by the test that
// uses it and stopped by t.Cleanup.
//
// PostgreSQL runs in the version a test asks for (PGOptions.Version, ForEachPGVersion and
// KCBACKUP_PG_VERSIONS): 15 from the host's Debian packages, 16 from a portable build
// (pgportable.go), 17, 18 and 19 inside a Debian root filesystem that test/tools/install.sh
// builds, each program in a private mount namespace where the host's temporary directory
// has the same path (pgroot.go).
//
// When a component cannot be found or started, Require fails the test if CI=true and skips
// it otherwise, with a message naming the missing piece and how to install it.
package harness

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true), where a missing component is a failure.
func InCI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// Require stops the test when a component is missing: Fatal in CI, Skip elsewhere.
func Require(t testing.TB, component string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := component + " is not available: " + err.Error() + " (run test/tools/install.sh, or `make test` which does)"
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// CacheDir is where test/tools/install.sh keeps the components it builds.
func CacheDir() string {
	if d := os.Getenv("KCBACKUP_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "kcbackup")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
