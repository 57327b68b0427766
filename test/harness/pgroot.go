package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// pgRootScript runs a program inside a root filesystem. It runs as root in a new mount
// namespace of its own (unshare --mount, private propagation), mounts what PostgreSQL needs
// there, and execs chroot and then setpriv (as the server's user, or stays root):
//
//   - /proc (PostgreSQL and its tools read /proc/self), /dev/shm (a tmpfs: POSIX dynamic
//     shared memory, initdb's default);
//   - the host's temporary directory at the same absolute path, so the data, socket and log
//     directories, the tests' archive directories and the kcbackup binary the tests build
//     have the same paths on both sides: a restore_command or data path that kcbackup
//     writes on the host is valid inside the root.
//
// The mounts exist only in that namespace: no other process sees them, and the kernel
// removes them when the last process in it (the postmaster and its children, or the one
// program) exits, even if the test binary is killed. Parallel tests each get their own, so
// nothing needs reference counting and nothing leaks onto the host.
//
// unshare, chroot and setpriv exec in turn without forking, so the caller's process is the
// program itself (signals reach the postmaster); setpriv --pdeathsig keep restores the
// parent-death signal that the change of user clears.
const pgRootScript = `set -e
root=$1 tmp=$2 uid=$3 gid=$4
shift 4
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
mkdir -p "$root$tmp"
mount --bind "$tmp" "$root$tmp"
if [ "$uid" = - ]; then exec chroot "$root" "$@"; fi
exec chroot "$root" /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups --pdeathsig keep -- "$@"
`

// command prepares program (a path where it runs) to run as owner, or as the caller when
// owner is nil. On the host that is exec.Command; for a root filesystem it is the
// pgRootScript wrapper. The returned SysProcAttr may be extended (Pdeathsig) but its
// Credential must not be replaced.
func (in *pgInstall) command(ctx context.Context, owner *syscall.Credential, program string, args ...string) *exec.Cmd {
	if in.portable != nil {
		return in.portableCommand(ctx, owner, program, args...)
	}
	name, argv := program, args
	attr := &syscall.SysProcAttr{Credential: owner}
	if in.root != "" {
		uid, gid := "-", "-"
		if owner != nil {
			uid, gid = strconv.FormatUint(uint64(owner.Uid), 10), strconv.FormatUint(uint64(owner.Gid), 10)
		}
		tmp, err := filepath.Abs(os.TempDir())
		if err != nil {
			tmp = os.TempDir()
		}
		name = "unshare"
		argv = append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", pgRootScript,
			"kcbackup-pgroot", in.root, filepath.Clean(tmp), uid, gid, program}, args...)
		attr = &syscall.SysProcAttr{} // the wrapper needs root until setpriv
	}
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.SysProcAttr = attr
	cmd.Env = cleanEnv()
	return cmd
}
