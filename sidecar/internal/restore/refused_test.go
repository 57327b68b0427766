package restore

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// startNamed runs a copy of sleep named name, so /proc/PID/comm says name.
func startNamed(t *testing.T, name string) int {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func pidDir(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestStalePostmasterPIDIsIgnoredAndALiveOneRefused: a postmaster.pid naming a process that
// is gone, or that is not postgres, is stale and does not block a restore with move-aside;
// one naming a running postgres process does, and so does one that names no PID.
func TestStalePostmasterPIDIsIgnoredAndALiveOneRefused(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	other := startNamed(t, "notpg")
	live := startNamed(t, "postgres")
	pidFile := func(pid int) string { return fmt.Sprintf("%d\n/var/lib/postgresql/data\n1764547200\n5432\n", pid) }
	for _, tc := range []struct {
		name, content string
		live          bool
		wantErr       string
	}{
		{"gone", pidFile(gone.Process.Pid), false, ""},
		{"reused by another program", pidFile(other), false, ""},
		{"running postgres", pidFile(live), true, "running postgres process"},
		{"garbage", "not a pid\n", false, "does not start with a process ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := pidDir(t, tc.content)
			st, err := CheckPostmaster(dir)
			if tc.wantErr == "" && (err != nil || !st.PIDFile || st.Live != tc.live) {
				t.Errorf("CheckPostmaster = %+v, %v; want a file, live %v", st, err, tc.live)
			}
			err = CheckDestination(dir, true)
			if tc.wantErr == "" && err != nil {
				t.Errorf("CheckDestination: %v, want a stale file ignored", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("CheckDestination: %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestUntouchedWrapsOnceAndKeepsTheCause(t *testing.T) {
	cause := errors.New("restoreTo is after the end of the archive")
	err := Untouched(Untouched(fmt.Errorf("plan: %w", cause)))
	if !errors.Is(err, ErrUntouched) || !errors.Is(err, cause) || err.Error() != "plan: "+cause.Error() {
		t.Errorf("Untouched = %q; want the cause's message, wrapping both", err)
	}
	if Untouched(nil) != nil {
		t.Error("Untouched(nil) is not nil")
	}
}
