package restore

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

func tarOf(t *testing.T, entries ...tar.Header) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range entries {
		h := h
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len("data"))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("data"))
		}
	}
	tw.Close()
	return &b
}

func TestExtractTarNeverWritesOutsideTheDirectory(t *testing.T) {
	outside := t.TempDir()
	for name, entries := range map[string][]tar.Header{
		"dot-dot":           {{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"absolute":          {{Name: "/tmp/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"through a symlink": {{Name: "pg_tblspc/x", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "pg_tblspc/x/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"relative symlink":  {{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../.."}, {Name: "link/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
	} {
		dir := t.TempDir()
		err := extractTar(tarOf(t, entries...), dir)
		if err == nil {
			t.Errorf("%s: extracted without error", name)
		}
		if _, serr := os.Stat(filepath.Join(outside, "evil")); serr == nil {
			t.Fatalf("%s: a file was written outside the data directory", name)
		}
	}
	dir := t.TempDir()
	if err := extractTar(tarOf(t, tar.Header{Name: "base/1/", Typeflag: tar.TypeDir}, tar.Header{Name: "base/1/123", Typeflag: tar.TypeReg, Mode: 0o600}), dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "base/1/123")); string(b) != "data" {
		t.Fatal("a regular entry was not extracted")
	}
}

// A value GUCQuote quotes reads back, as PostgreSQL reads postgresql.conf (backslash
// escapes included), as the same bytes: the backslash of ShellQuote's escaped quote reaches the shell.
func TestRecoveryCommandQuoting(t *testing.T) {
	for _, v := range []string{ShellQuote("s3://b/it's"), `a\b`, `\'`, "plain"} {
		name, got, ok := parseSetting("restore_command = " + GUCQuote(v))
		if !ok || name != "restore_command" || got != v {
			t.Errorf("GUCQuote(%q) = %s reads back as %q (ok %v)", v, GUCQuote(v), got, ok)
		}
	}
}

// effectiveSettings reads postgresql.auto.conf as PostgreSQL does for these simple lines:
// the last assignment of a name wins.
func effectiveSettings(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if name, value, ok := strings.Cut(line, " = "); ok && !strings.HasPrefix(line, "#") {
			out[name] = strings.Trim(value, "'")
		}
	}
	return out
}

func TestRecoveryConfigOverridesAnEarlierRestoresTarget(t *testing.T) {
	for _, tc := range []struct {
		stop walarchive.StopKind
		want map[string]string
	}{
		{walarchive.StopAtEnd, map[string]string{}},
		{walarchive.StopAtLSN, map[string]string{"recovery_target_lsn": "0/5000028"}},
		{walarchive.StopImmediate, map[string]string{"recovery_target": "immediate"}},
		{walarchive.StopAtTime, map[string]string{"recovery_target_time": "2026-12-01 10:00:00+00:00"}},
	} {
		dir := t.TempDir()
		// A backup taken after an earlier restore carries that restore's settings.
		old := "recovery_target_time = '2026-11-01 10:00:00+00:00'\nrecovery_target_lsn = '0/1'\n"
		if err := os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte(old), 0o600); err != nil {
			t.Fatal(err)
		}
		plan := walarchive.RestorePlan{Stop: tc.stop, Timeline: 2, LastXactLSN: 0x5000028,
			Target: walarchive.Target{Time: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}}
		if err := writeRecoveryConfig(dir, Options{Plan: plan, Kcbackup: "/bin/kcbackup", StorageURL: "file:///a", Now: time.Now}); err != nil {
			t.Fatal(err)
		}
		got := effectiveSettings(t, filepath.Join(dir, "postgresql.auto.conf"))
		for _, g := range []string{"recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"} {
			if got[g] != tc.want[g] {
				t.Errorf("stop at %s: %s = %q; want %q", tc.stop, g, got[g], tc.want[g])
			}
		}
	}
}

// TestPrefetchedSegmentIsRenamedByTheShellAndTheRestFallsThrough runs the restore_command
// a standalone restore writes, as PostgreSQL does (sh -c in the data directory), with
// wal-fetch standing in as /bin/false so the fallthrough is visible.
func TestPrefetchedSegmentIsRenamedByTheShellAndTheRestFallsThrough(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	plan := walarchive.RestorePlan{Stop: walarchive.StopAtEnd, Timeline: 1, Backup: walarchive.BackupRecord{ID: "20261201T100000Z"}}
	o := Options{Plan: plan, Kcbackup: "/bin/false", StorageURL: "file:///a b's", Prefetch: 8, Now: func() time.Time { return now }}
	if err := writeRecoveryConfig(dir, o); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	var cmd string
	for _, line := range strings.Split(string(data), "\n") {
		if name, v, ok := parseSetting(line); ok && name == "restore_command" {
			cmd = v
		}
	}
	pre := filepath.Join(dir, "pg_wal", "kcbackup-prefetch", "20261201T100000Z-20261201T100000")
	if !strings.HasPrefix(cmd, PrefetchedFastPath("pg_wal/kcbackup-prefetch/20261201T100000Z-20261201T100000")) || !strings.Contains(cmd, "/bin/false") || !strings.HasSuffix(cmd, " %f %p") {
		t.Fatalf("restore_command = %q", cmd)
	}
	if err := os.MkdirAll(pre, 0o700); err != nil {
		t.Fatal(err)
	}
	seg := "000000010000000000000005"
	if err := os.WriteFile(filepath.Join(pre, seg), []byte("segment"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(f string) error {
		c := exec.Command("sh", "-c", strings.ReplaceAll(strings.ReplaceAll(cmd, "%f", f), "%p", "pg_wal/RECOVERYXLOG"))
		c.Dir = dir
		return c.Run()
	}
	if err := run(seg); err != nil {
		t.Fatalf("prefetched %s: %v", seg, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "pg_wal", "RECOVERYXLOG")); err != nil || string(b) != "segment" {
		t.Fatalf("RECOVERYXLOG after the fast path: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(pre, seg)); err == nil {
		t.Fatal("the prefetched segment is still in the prefetch directory")
	}
	// Not prefetched (and a history file): wal-fetch runs, here /bin/false.
	for _, f := range []string{"000000010000000000000006", "00000002.history"} {
		if err := run(f); err == nil {
			t.Fatalf("%s was not prefetched, yet restore_command succeeded without wal-fetch", f)
		}
	}
	// Through the sidecar there is no prefetch directory and no fast path.
	dir2 := t.TempDir()
	o.FetchVia, o.FetchTokenFile = "http://127.0.0.1:8008", "/t"
	if err := writeRecoveryConfig(dir2, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, "postgresql.auto.conf")); strings.Contains(string(b), "mv -f") {
		t.Fatalf("restore_command through the sidecar has the prefetch fast path:\n%s", b)
	}
}
