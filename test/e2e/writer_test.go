package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// waitSidecarError waits until the sidecar reports an error containing want (its status'
// last error), or fails after timeout with what it reported.
func waitSidecarError(t *testing.T, sc *harness.Sidecar, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if st, err := sc.Status(context.Background()); err == nil {
			last = st.LastError
			if strings.Contains(last, want) {
				return last
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the sidecar never reported %q within %s; last error %q\n%s", want, timeout, last, sc.Log())
	return ""
}

// archiveTimelines lists the timelines the archive holds WAL or a history of.
func archiveTimelines(t *testing.T, url string) []uint32 {
	t.Helper()
	tlis, err := openArchive(t, url).Timelines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tlis
}

// A copy restored from production's archive to a mid-point and started with its own
// sidecar on the same archive (issue 19's story) is refused while production archives,
// and still after production crashed and its claim lapsed (it is not the continuation of
// what the archive holds); restore --to latest then returns production's history, every
// row of it, and none of the copy's.
func TestARestoredCopyNeverArchivesIntoTheSameArchive(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	ttl := []string{"--partial-interval", "200ms", "--writer-ttl", "3s"}
	p := harness.StartPostgres(t, pgSettings(nil))
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: ttl})
	createLedger(t, p)
	takeBackup(t, p, url, nil)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'P' FROM generate_series(1, 60)")
	time.Sleep(50 * time.Millisecond)
	mid := time.Now().UTC()
	time.Sleep(50 * time.Millisecond)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'P' FROM generate_series(1, 100)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)

	// The copy, restored to the mid-point, archives into the same archive: refused.
	c, _ := restoreAndStart(t, nil, url, mid.Format(time.RFC3339Nano))
	cs := harness.StartSidecar(t, c, harness.SidecarOptions{Storage: url, Args: ttl, NoWait: true})
	msg := waitSidecarError(t, cs, "live writer", time.Minute)
	if !strings.Contains(msg, "own archive") {
		t.Errorf("the refusal does not say what to do: %s", msg)
	}
	exec1(t, c, "INSERT INTO ledger (note) SELECT 'C' FROM generate_series(1, 40)")
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'P' FROM generate_series(1, 60)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)

	// Production crashes: its claim lapses, and the copy is still refused.
	ps.Kill()
	if err := p.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	waitSidecarError(t, cs, "copy of an earlier state", time.Minute)
	if tlis := archiveTimelines(t, url); len(tlis) != 1 || tlis[0] != 1 {
		t.Fatalf("the archive holds timelines %v; want only production's timeline 1", tlis)
	}
	r, _ := restoreAndStart(t, nil, url, "latest")
	if got := query(t, r, "SELECT count(*) FILTER (WHERE note = 'P') || '/' || count(*) FROM ledger"); got != "220/220" {
		t.Fatalf("restore --to latest holds %s (production's rows/all); want 220/220", got)
	}
}

// An in-place restore hands the archive over: the old server's sidecar is fenced at once
// (it archives nothing more, although its server goes on), and the restored server's
// sidecar archives its new timeline.
func TestAHandoverFencesTheOldWriterAndTheRestoredServerArchives(t *testing.T) {
	url := fileArchive(t)
	args := []string{"--partial-interval", "200ms", "--writer-ttl", "3s"}
	p := harness.StartPostgres(t, pgSettings(nil))
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: args})
	createLedger(t, p)
	takeBackup(t, p, url, nil)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 50)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)

	// The old server is gone for good (here: it lives on, to show that it is fenced).
	r, _ := restoreAndStart(t, nil, url, "latest", "--handover")
	waitSidecarError(t, ps, "handed over", time.Minute)
	if !strings.Contains(ps.Log(), "fenced") {
		t.Fatalf("the old sidecar did not log that it was fenced:\n%s", ps.Log())
	}
	a := openArchive(t, url)
	end1, _, err := a.TimelineEnd(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}

	rs := harness.StartSidecar(t, r, harness.SidecarOptions{Storage: url, Args: args})
	exec1(t, r, "INSERT INTO ledger (note) SELECT 'restored' FROM generate_series(1, 7)")
	waitArchived(t, rs, flushLSN(t, r), time.Minute)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'fenced' FROM generate_series(1, 30)")
	exec1(t, p, "SELECT pg_switch_wal()")
	exec1(t, r, "INSERT INTO ledger (note) SELECT 'restored' FROM generate_series(1, 3)")
	waitArchived(t, rs, flushLSN(t, r), time.Minute)
	if end, _, err := a.TimelineEnd(context.Background(), 1); err != nil || end != end1 {
		t.Fatalf("the fenced writer went on archiving timeline 1: its end moved from %s to %s (%v)", end1, end, err)
	}
	got, _ := restoreAndStart(t, nil, url, "latest")
	if n := query(t, got, "SELECT count(*) FILTER (WHERE note = 'restored') || '/' || count(*) FROM ledger"); n != "10/60" {
		t.Fatalf("restore --to latest after the hand-over holds %s (restored rows/all); want 10/60", n)
	}
}

// A store that ignores If-None-Match (an older MinIO, Ceph RGW) never lets an immutable
// object be replaced: a second, different history of a timeline is refused and the first
// kept.
func TestAStoreIgnoringConditionalWritesKeepsHistoriesImmutable(t *testing.T) {
	dir := harness.FileArchiveDir(t)
	url := "file://" + dir
	env := []string{"KCBACKUP_STORAGE_COMPAT=ignore-conditional-writes"}
	p := harness.StartPostgres(t, pgSettings(nil))
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Env: env, Args: []string{"--partial-interval", "200ms"}})
	createLedger(t, p)
	takeBackup(t, p, url, env)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'x' FROM generate_series(1, 10)")
	waitArchived(t, ps, flushLSN(t, p), time.Minute)
	if !strings.Contains(ps.Log(), "ignores conditional writes") {
		t.Errorf("the sidecar did not find out that the store ignores conditional writes:\n%s", ps.Log())
	}
	// A history of timeline 2 written by someone else first: the sidecar's must not replace it.
	a := openArchive(t, url)
	other := walarchive.TimelineHistory{{Parent: 1, SwitchPoint: 0x1000000, Reason: "someone else's"}}.Format()
	if err := a.PutHistory(context.Background(), 2, other); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, walarchive.HistoryKey(2)))
	if err != nil {
		t.Fatal(err)
	}
	// The server fails over to a standby, whose sidecar must archive timeline 2's history.
	standby := harness.StartStandby(t, p, harness.PGOptions{})
	if err := ps.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}
	ss := harness.StartSidecar(t, standby, harness.SidecarOptions{Storage: url, Env: env, NoWait: true, Args: []string{"--partial-interval", "200ms"}})
	if err := p.Stop(context.Background(), "fast"); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(ss.Log(), "another history for this timeline is archived") {
		if time.Now().After(deadline) {
			t.Fatalf("the standby's sidecar did not refuse the conflicting history:\n%s", ss.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	after, err := os.ReadFile(filepath.Join(dir, walarchive.HistoryKey(2)))
	if err != nil || string(after) != string(before) {
		t.Fatalf("the stored history of timeline 2 was replaced (%v)", err)
	}
}
