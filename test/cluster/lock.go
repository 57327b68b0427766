package cluster

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machineLockPath serialises single-node clusters on one machine. Parts of a node are
// machine-wide: kubelet's cgroups (kubepods), /var/log/containers, the cni- network
// namespaces and /run/containerd. A second node started beside a running one tears the
// first one's pods down (seen: sandboxes killed, "namespace path: lstat /proc/N/ns/ipc: no
// such file or directory"), so a second run waits for the first instead.
const machineLockPath = "/run/kcbackup-cluster.lock"

// lockMachine takes the machine's cluster lock, waiting (and saying so once) while
// another node holds it, until ctx ends. The lock is the kernel's (flock): a holder that
// dies releases it.
func lockMachine(ctx context.Context, logf func(string, ...any)) (*os.File, error) {
	return lockFile(ctx, machineLockPath, logf)
}

// lockFile takes the flock on path (lockMachine's, with the path a test chooses).
func lockFile(ctx context.Context, machineLockPath string, logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(machineLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the cluster lock %s: %w", machineLockPath, err)
	}
	waited := time.Now()
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", machineLockPath, err)
		}
		if !said {
			holder, _ := os.ReadFile(machineLockPath)
			logf("cluster: another single-node cluster runs on this machine (%s); waiting for it to stop",
				orUnknown(strings.TrimSpace(string(holder))))
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waited %s for the other cluster on this machine to stop (lock %s): %w",
				time.Since(waited).Round(time.Second), machineLockPath, ctx.Err())
		case <-time.After(time.Second):
		}
	}
	if said {
		logf("cluster: the other cluster stopped after %.0fs", time.Since(waited).Seconds())
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+", started "+time.Now().UTC().Format(time.RFC3339)+"\n"), 0)
	return f, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "holder unknown"
	}
	return s
}
