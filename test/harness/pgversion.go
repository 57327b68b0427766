package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const (
	// PGVersionsEnv names the environment variable listing the PostgreSQL major versions
	// ForEachPGVersion runs, such as "15,17,18".
	PGVersionsEnv = "KCBACKUP_PG_VERSIONS"

	// PGDefaultVersion is the version a cluster runs when PGOptions.Version is zero.
	PGDefaultVersion = 15

	// pgRootBinDir is where Debian's postgresql-N package installs the server programs,
	// inside a root filesystem as on the host.
	pgRootBinDir = "/usr/lib/postgresql/%d/bin"
)

// PGVersions are the major versions the harness can run: 15 from the host's Debian 12
// packages, 16 from a portable build (pgportable.go), the others from a root filesystem
// that test/tools/install.sh builds.
var PGVersions = []int{15, 16, 17, 18, 19}

// pgRootSuites names the Debian suite each root filesystem is built from; the cache
// directory is pgroot-<major>-<suite>, as test/tools/install.sh names it (19: sid with
// experimental added, whence its packages come).
var pgRootSuites = map[int]string{17: "trixie", 18: "sid", 19: "sid-experimental"}

// pgInstall is where the programs of one PostgreSQL major version are and how they run:
// on the host (root == "") or inside a root filesystem, each program in a private mount
// namespace with /proc, /dev/shm and os.TempDir() mounted (see pgroot.go).
type pgInstall struct {
	major  int
	root   string // host path of the root filesystem; "" for the host's own packages
	binDir string // directory of the programs, as seen where they run
	// portable is set for a portable build (pgportable.go), whose missing programs come
	// from the installs in clients, by program name.
	portable *portableInstall
	clients  map[string]*pgInstall
}

// pgInstalls caches pgInstallFor's answers for the life of the test process: a root is
// checked (postgres -V inside it) once, not by every test.
var pgInstalls = struct {
	sync.Mutex
	found map[int]*pgInstall
}{found: map[int]*pgInstall{}}

// pgInstallFor finds the programs of major and checks that they are that version. A
// missing install is not cached, so one that install.sh builds meanwhile is found.
func pgInstallFor(major int) (*pgInstall, error) {
	pgInstalls.Lock()
	defer pgInstalls.Unlock()
	if in, ok := pgInstalls.found[major]; ok {
		return in, nil
	}
	in, err := findPGInstall(major)
	if err != nil {
		return nil, err
	}
	pgInstalls.found[major] = in
	return in, nil
}

// findPGInstall locates the programs of major, on the host or in its root filesystem.
func findPGInstall(major int) (*pgInstall, error) {
	in := &pgInstall{major: major, binDir: fmt.Sprintf(pgRootBinDir, major)}
	if _, ok := pgPortableInstalls[major]; ok {
		p, err := findPortableInstall(major)
		if err != nil {
			return nil, err
		}
		in = p
	} else if major == PGDefaultVersion {
		in.binDir = PGBinDir
		if d := os.Getenv(PGBinDirEnv); d != "" {
			in.binDir = d
		}
	} else {
		suite, ok := pgRootSuites[major]
		if !ok {
			return nil, fmt.Errorf("PostgreSQL %d is not one the harness runs (want one of %v)", major, PGVersions)
		}
		in.root = filepath.Join(CacheDir(), "pgroot-"+strconv.Itoa(major)+"-"+suite)
		if _, err := os.Stat(in.root); err != nil {
			return nil, fmt.Errorf("find the PostgreSQL %d root filesystem (build it with `make tools` or test/tools/install.sh pgroot-%d): %w", major, major, err)
		}
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("PostgreSQL %d runs inside %s with chroot, which needs root", major, in.root)
		}
	}
	if err := in.check(); err != nil {
		return nil, err
	}
	return in, nil
}

// check verifies that the install holds the programs the harness and the tests run and
// that its postgres reports the expected major version.
func (in *pgInstall) check() error {
	if in.portable != nil {
		return in.portableCheck()
	}
	for _, name := range []string{"initdb", "postgres", "pg_ctl", "pg_basebackup", "pgbench", "pg_waldump", "pg_verifybackup", "pg_amcheck"} {
		if _, err := os.Stat(in.hostPath(name)); err != nil {
			hint := "set " + PGBinDirEnv + " to override"
			if in.root != "" {
				hint = "rebuild it with test/tools/install.sh pgroot-" + strconv.Itoa(in.major)
			}
			return fmt.Errorf("find PostgreSQL programs in %s (%s): %w", filepath.Dir(in.hostPath(name)), hint, err)
		}
	}
	// restore_command (kcbackup wal-fetch) runs inside the root and may need the CA bundle,
	// as in a server's container.
	if bundle := filepath.Join(in.root, "etc/ssl/certs/ca-certificates.crt"); in.root != "" {
		if _, err := os.Stat(bundle); err != nil {
			return fmt.Errorf("the PostgreSQL %d root lacks ca-certificates (rebuild it with test/tools/install.sh pgroot-%d): %w", in.major, in.major, err)
		}
	}
	out, err := in.command(context.Background(), nil, in.program("postgres"), "-V").Output()
	if err != nil {
		return fmt.Errorf("run %s -V: %w", in.hostPath("postgres"), err)
	}
	// "postgres (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)", "postgres (PostgreSQL) 19rc1 (Debian 19~rc1-1)"
	if !reportsMajor(out, in.major) {
		return fmt.Errorf("%s is not PostgreSQL %d: %s", in.hostPath("postgres"), in.major, bytes.TrimSpace(out))
	}
	return nil
}

// program is the path of a PostgreSQL program where it runs.
func (in *pgInstall) program(name string) string {
	if in.portable != nil {
		return in.portableProgram(name)
	}
	return filepath.Join(in.binDir, name)
}

// hostPath is the path of a PostgreSQL program on the host's file system.
func (in *pgInstall) hostPath(name string) string {
	if in.portable != nil {
		return in.portableHostPath(name)
	}
	return filepath.Join(in.root, in.binDir, name)
}

// serverOwner returns the credential the server must run under: nil when the tests do not
// run as root, otherwise the postgres OS user's where the server runs. Inside a root
// filesystem that user must have the host's postgres uid and gid (install.sh creates it so),
// because the tests hand data directories to "postgres" on the host.
func (in *pgInstall) serverOwner() (*syscall.Credential, error) {
	host, err := serverOwner()
	if err != nil || in.root == "" {
		return host, err
	}
	passwd := filepath.Join(in.root, "etc", "passwd")
	inRoot, err := lookupPasswd(passwd, pgOSUser)
	if err != nil {
		return nil, err
	}
	if host != nil && (host.Uid != inRoot.Uid || host.Gid != inRoot.Gid) {
		return nil, fmt.Errorf("user %s is %d:%d in %s but %d:%d on the host (rebuild the root with test/tools/install.sh pgroot-%d)",
			pgOSUser, inRoot.Uid, inRoot.Gid, passwd, host.Uid, host.Gid, in.major)
	}
	return inRoot, nil
}

// lookupPasswd reads name's uid and gid from a passwd(5) file.
func lookupPasswd(path, name string) (*syscall.Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("look up user %s: %w", name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 || fields[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("look up user %s in %s: malformed line %q", name, path, sc.Text())
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("look up user %s in %s: %w", name, path, err)
	}
	return nil, fmt.Errorf("look up user %s: not in %s", name, path)
}

// ParsePGVersions parses a comma-separated list of major versions such as "15,17,18".
// Every entry must be one of PGVersions; duplicates are an error.
func ParsePGVersions(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		v, err := strconv.Atoi(f)
		if err != nil || !slices.Contains(PGVersions, v) {
			return nil, fmt.Errorf("%s=%q: %q is not a PostgreSQL major version the harness runs (want a comma-separated list of %v)", PGVersionsEnv, s, f, PGVersions)
		}
		if slices.Contains(out, v) {
			return nil, fmt.Errorf("%s=%q: %d is listed twice", PGVersionsEnv, s, v)
		}
		out = append(out, v)
	}
	return out, nil
}

// SelectedPGVersions returns the versions ForEachPGVersion runs: those listed in
// KCBACKUP_PG_VERSIONS; when it is unset, all of PGVersions with CI=true and otherwise
// those whose programs are installed (15 at least, so its test skips naming what is missing).
func SelectedPGVersions() ([]int, error) {
	if s, ok := os.LookupEnv(PGVersionsEnv); ok && strings.TrimSpace(s) != "" {
		return ParsePGVersions(s)
	}
	if InCI() {
		return slices.Clone(PGVersions), nil
	}
	var out []int
	for _, v := range PGVersions {
		if _, err := pgInstallFor(v); err == nil {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		out = []int{PGDefaultVersion}
	}
	return out, nil
}

// ForEachPGVersion runs f as a subtest "pg<N>" for each selected PostgreSQL major version
// (SelectedPGVersions), one after the other. Pass the version to StartPostgres in
// PGOptions.Version. A selected version that is not installed fails the subtest with
// CI=true and skips it otherwise, naming `make tools`.
func ForEachPGVersion(t *testing.T, f func(t *testing.T, version int)) {
	t.Helper()
	versions, err := SelectedPGVersions()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		t.Run("pg"+strconv.Itoa(v), func(t *testing.T) {
			_, err := pgInstallFor(v)
			Require(t, "PostgreSQL "+strconv.Itoa(v), err)
			f(t, v)
		})
	}
}

// dataDirVersion reads the major version from dir/PG_VERSION.
func dataDirVersion(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return 0, fmt.Errorf("read the data directory's version: %w", err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read the data directory's version: %s/PG_VERSION holds %q, not a major version", dir, bytes.TrimSpace(b))
	}
	return v, nil
}

// reportsMajor reports whether postgres -V output names major: a release ("17.12") or a
// pre-release ("19rc1", "19beta2", "19devel"), as experimental serves before the release.
func reportsMajor(out []byte, major int) bool {
	prefix := []byte("(PostgreSQL) " + strconv.Itoa(major))
	i := bytes.Index(out, prefix)
	if i < 0 {
		return false
	}
	rest := out[i+len(prefix):]
	return bytes.HasPrefix(rest, []byte(".")) || bytes.HasPrefix(rest, []byte("rc")) ||
		bytes.HasPrefix(rest, []byte("beta")) || bytes.HasPrefix(rest, []byte("devel"))
}
