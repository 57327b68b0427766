package cli

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blockedFetchEnv makes the test binary, run as a child process, start a fetch into the
// directory it names and block half-way through it (see TestMain).
const blockedFetchEnv = "KCBACKUP_TEST_BLOCKED_FETCH_DIR"

// blockedFetch is the fetch the tests below kill: it writes 1 MiB and stalls.
func blockedFetch(dir string) {
	_ = writeAtomically(filepath.Join(dir, "000000010000000000000001"), "000000010000000000000001", func(w io.Writer) error {
		if _, err := w.Write(make([]byte, 1<<20)); err != nil {
			return err
		}
		select {} // the download stalls; the parent kills this process
	})
}

// startBlockedFetch starts a child process whose fetch into dir stalls after 1 MiB, and
// waits until its temporary file holds that MiB; it returns the process and the file.
func startBlockedFetch(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	before := fetchTemps(t, dir)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), blockedFetchEnv+"="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(time.Minute)
	for {
		for _, name := range fetchTemps(t, dir) {
			if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Size() >= 1<<20 && !contains(before, name) {
				return cmd, name
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper fetch wrote no 1 MiB temporary file in %s within a minute", dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fetchTemps lists the temporary files of fetches in dir.
func fetchTemps(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".kcbackup-fetch-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A fetch killed half-way leaves its temporary file; the next fetch into the same
// directory removes it, and leaves the temporary file of a fetch still running.
func TestNextFetchRemovesTheTempFileOfAKilledFetchButNotOfALiveOne(t *testing.T) {
	dir := t.TempDir()
	killed, killedTemp := startBlockedFetch(t, dir)
	if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed.Wait()
	if _, err := os.Stat(filepath.Join(dir, killedTemp)); err != nil {
		t.Fatalf("the killed fetch's temporary file is not there to clean up: %v", err)
	}
	_, liveTemp := startBlockedFetch(t, dir)

	dest := filepath.Join(dir, "000000010000000000000002")
	if err := writeAtomically(dest, "000000010000000000000002", func(w io.Writer) error {
		_, err := w.Write([]byte("segment"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "segment" {
		t.Fatalf("the next fetch wrote %q, %v", b, err)
	}
	left := fetchTemps(t, dir)
	if contains(left, killedTemp) {
		t.Errorf("the killed fetch's temporary file %s outlived the next fetch", killedTemp)
	}
	if !contains(left, liveTemp) {
		t.Errorf("the next fetch removed %s, the temporary file of a fetch still running", liveTemp)
	}
	if len(left) != 1 {
		t.Errorf("temporary files left: %v; want only the live fetch's", left)
	}
}

// Unlocked files of a live process are left while young (the moment between creating a
// file and locking it), and removed once old; those of dead writers go at once.
func TestRemoveStaleFetchTempsKeepsAYoungFileOfALiveWriter(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	live := fetchTempPrefix + "1-000000010000000000000003-1" // PID 1 is alive in every namespace
	oldLive := fetchTempPrefix + "1-000000010000000000000004-1"
	dead := fetchTempPrefix + "4194305-000000010000000000000005-1" // above pid_max
	for _, n := range []string{live, oldLive, dead} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Chtimes(filepath.Join(dir, oldLive), now.Add(-2*fetchTempGrace), now.Add(-2*fetchTempGrace))
	removeStaleFetchTemps(dir, now)
	if left := fetchTemps(t, dir); len(left) != 1 || left[0] != live {
		t.Fatalf("left %v; want only %s", left, live)
	}
}
