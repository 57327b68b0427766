package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

func TestSidecarKilledMidSegmentResumesWithoutGap(t *testing.T) {
	pg, url, sc, first := archivedCluster(t, "200ms")
	bench := pgbenchFor(t, pg, "8")
	var before walarchive.LSN
	for i := 0; i < 3; i++ {
		time.Sleep(1500 * time.Millisecond)
		before = slotRestart(t, pg)
		sc.Kill() // SIGKILL: no drain, no final status
		time.Sleep(300 * time.Millisecond)
		if after := slotRestart(t, pg); after < before {
			t.Fatalf("slot regressed from %s to %s", before, after)
		}
		if err := sc.Start(); err != nil {
			t.Fatal(err)
		}
		sc.WaitReady(30 * time.Second)
	}
	if err := <-bench; err != nil {
		t.Fatal(err)
	}
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 30*time.Second)
	if after := slotRestart(t, pg); after < before {
		t.Fatalf("slot regressed from %s to %s", before, after)
	}
	assertNoGap(t, nil, url, pg, 1, first, flush)
}

func TestObjectStoreOutageUnderLoadDrainsWithoutGap(t *testing.T) {
	ctx := context.Background()
	minio := harness.StartMinIO(t)
	bucket := minio.NewBucket(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	setEnv(t, env) // the test opens the archive itself too
	url := "s3://" + bucket + "/cluster-a"
	pg := harness.StartPostgres(t, pgSettings(nil))
	// A small spool, so receiving pauses during the outage and only the server still knows
	// how much WAL the slot holds.
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env, Args: []string{"--partial-interval", "500ms", "--spool-max-mb", "32"}})
	start := slotRestart(t, pg)
	if _, err := pg.Pgbench(ctx, "-i", "-s", "1"); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	// Step 1: the store goes away under load.
	bench := pgbenchFor(t, pg, "40")
	time.Sleep(2 * time.Second)
	if err := minio.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	outageStart := time.Now()
	ackedAtOutage := slotRestart(t, pg)
	exec1(t, pg, "CREATE TABLE bulk AS SELECT g, md5(g::text) FROM generate_series(1, 1000000) g") // ~100 MB of WAL: fills the spool
	sawDown, sawNotReady := false, false
	for time.Since(outageStart) < 30*time.Second {
		if v, err := sc.Metric("kcbackup_storage_up"); err == nil && v == 0 {
			sawDown = true
		}
		if resp, err := http.Get(sc.URL() + "/readyz"); err == nil {
			if resp.StatusCode == http.StatusServiceUnavailable {
				sawNotReady = true
			}
			resp.Body.Close()
		}
		// Nothing is acknowledged while nothing can be stored.
		if got := slotRestart(t, pg); got > ackedAtOutage+1<<20 {
			t.Fatalf("slot advanced from %s to %s during the outage", ackedAtOutage, got)
		}
		time.Sleep(time.Second)
	}
	if !sawDown || !sawNotReady {
		t.Fatalf("outage not visible: storage_up==0 seen %v, readyz 503 seen %v", sawDown, sawNotReady)
	}
	// The slot-retention gauge (what the disk-full alert watches) follows the server's own
	// figure, though the sidecar stopped receiving when its spool filled.
	held := lsn(t, query(t, pg, "SELECT pg_current_wal_flush_lsn()")) - slotRestart(t, pg)
	time.Sleep(6 * time.Second)
	if v, err := sc.Metric("kcbackup_slot_retained_bytes"); err != nil || v < float64(held) {
		t.Fatalf("kcbackup_slot_retained_bytes = %v (%v); the server holds at least %d bytes for the slot", v, err, held)
	}
	if v, _ := sc.Metric("kcbackup_spool_bytes"); v > 40<<20 {
		t.Fatalf("spool holds %v bytes, past its 32 MiB limit", v)
	}
	if v, err := sc.Metric(`kcbackup_upload_errors_total{kind="partial"}`); err != nil || v == 0 {
		if v2, _ := sc.Metric(`kcbackup_upload_errors_total{kind="segment"}`); v2 == 0 {
			t.Fatalf("no upload errors counted during the outage (%v, %v)", v, err)
		}
	}

	// Step 2: the store returns; the backlog drains in order.
	if err := minio.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-bench; err != nil {
		t.Fatal(err)
	}
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 2*time.Minute)
	assertNoGap(t, env, url, pg, 1, start.SegmentNo(1<<20), flush)
}

func TestServerCrashAndRestartKeepsArchivingWithoutGap(t *testing.T) {
	ctx := context.Background()
	pg, url, sc, first := archivedCluster(t, "200ms")
	bench := pgbenchFor(t, pg, "4")
	time.Sleep(2 * time.Second)
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	<-bench // fails: the server crashed
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exec1(t, pg, "CREATE TABLE after_crash AS SELECT generate_series(1, 50000) AS n")
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, time.Minute)
	assertNoGap(t, nil, url, pg, 1, first, flush)
}

func TestPromotionArchivesHistoryFirstAndFollowsNewTimeline(t *testing.T) {
	harness.ForEachPGVersion(t, testPromotionArchivesHistoryFirstAndFollowsNewTimeline)
}

func testPromotionArchivesHistoryFirstAndFollowsNewTimeline(t *testing.T, version int) {
	ctx := context.Background()
	primary := harness.StartPostgres(t, pgSettingsOn(version, nil))
	exec1(t, primary, "CREATE TABLE t AS SELECT generate_series(1, 10000) AS n")
	standby := harness.StartStandby(t, primary, pgSettings(nil))
	url := fileArchive(t)
	sc := harness.StartSidecar(t, standby, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	exec1(t, primary, "INSERT INTO t SELECT generate_series(1, 100000)")
	time.Sleep(time.Second)
	if err := primary.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	exec1(t, standby, "INSERT INTO t SELECT generate_series(1, 100000)")
	flush := flushLSN(t, standby)
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := sc.Status(ctx)
		if err == nil && st.Timeline == 2 && st.ArchivedLSN != "" && lsn(t, st.ArchivedLSN) >= flush {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar did not archive timeline 2 up to %s: %+v\n%s", flush, st, sc.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	a := openArchive(t, url)
	h, err := a.History(ctx, 2)
	if err != nil || len(h) != 1 || h[0].Parent != 1 {
		t.Fatalf("history of timeline 2 = %+v, %v", h, err)
	}
	// The history object was stored before any WAL of timeline 2.
	hist, _ := a.Storage.Stat(ctx, walarchive.HistoryKey(2))
	objs, _ := a.Storage.List(ctx, walarchive.TimelineDir(2))
	if len(objs) == 0 {
		t.Fatal("no WAL of timeline 2 archived")
	}
	for _, o := range objs {
		if o.ModTime.Before(hist.ModTime) {
			t.Fatalf("%s was stored before the history file", o.Key)
		}
	}
	// The old timeline's last segment is stored only as a partial, never under its final name.
	switchSeg := h[0].SwitchPoint.SegmentNo(a.SegmentSize())
	if _, err := a.Storage.Stat(ctx, walarchive.SegmentKey(1, switchSeg, a.SegmentSize())); err == nil {
		t.Fatalf("timeline 1's cut-short segment %d is stored under its final name", switchSeg)
	}
	assertNoGap(t, nil, url, standby, 2, switchSeg, flush)
}

func TestSecondClusterOnTheSameArchiveIsRefused(t *testing.T) {
	url := fileArchive(t)
	a := harness.StartPostgres(t, pgSettings(nil))
	harness.StartSidecar(t, a, harness.SidecarOptions{Storage: url})
	b := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, b, harness.SidecarOptions{Storage: url, NoWait: true})
	deadline := time.Now().Add(30 * time.Second)
	for !sc.Exited() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !sc.Exited() || !strings.Contains(sc.Log(), "belongs to the cluster with system identifier") {
		t.Fatalf("second cluster was not refused clearly:\n%s", sc.Log())
	}
}

func TestBadInputsGetClearErrorsNamingWhatToFix(t *testing.T) {
	ctx := context.Background()
	pg := harness.StartPostgres(t, pgSettings(nil))
	url := fileArchive(t)
	if err := pg.CreateRole(ctx, "pw_repl", "right-password", true); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole(ctx, "pw_plain", "right-password", false); err != nil {
		t.Fatal(err)
	}
	minimal := harness.StartPostgres(t, harness.PGOptions{Settings: map[string]string{"wal_level": "minimal", "max_wal_senders": "0"}})
	unwritable := filepath.Join(t.TempDir(), "file")
	os.WriteFile(unwritable, nil, 0o600)

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unreachable server", []string{"PGHOST=127.0.0.1", "PGPORT=1"}, []string{"backup", "--storage", url}, "connect to PostgreSQL at 127.0.0.1:1"},
		{"wrong password", pgEnv(pg, "pw_repl", "wrong"), []string{"backup", "--storage", url}, "PGPASSWORD"},
		{"non-replication role", pgEnv(pg, "pw_plain", "right-password"), []string{"backup", "--storage", url}, "REPLICATION"},
		{"wal_level minimal", minimal.Env(), []string{"backup", "--storage", url}, "max_wal_senders"},
		{"bad storage URL", pg.Env(), []string{"backup", "--storage", "s3:/relative"}, "expected file:///absolute/path or s3://bucket"},
		{"relative file URL", pg.Env(), []string{"run", "--storage", "file://archive"}, "invalid storage URL"},
		{"unwritable spool", pg.Env(), []string{"run", "--storage", url, "--spool", unwritable + "/spool", "--listen", "127.0.0.1:0"}, "spool directory"},
		{"bad env var", append(pg.Env(), "KCBACKUP_PARTIAL_INTERVAL=soon"), []string{"run", "--storage", url}, "KCBACKUP_PARTIAL_INTERVAL"},
		{"bad slot", pg.Env(), []string{"run", "--storage", url, "--slot", "Bad-Slot"}, "invalid slot name"},
		{"target without zone", nil, []string{"restore", "--storage", url, "--pgdata", t.TempDir() + "/x", "--to", "2026-01-02T03:04:05"}, "no time zone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, stderr, code := harness.Kcbackup(t, ctx, tc.env, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure mentioning %q", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "right-password") || strings.Contains(stderr, "wrong\"") {
				t.Fatalf("error leaks a password: %s", stderr)
			}
		})
	}
}

func pgEnv(pg *harness.Postgres, user, password string) []string {
	var env []string
	for _, kv := range pg.Env() {
		if !strings.HasPrefix(kv, "PGUSER=") {
			env = append(env, kv)
		}
	}
	return append(env, "PGUSER="+user, "PGPASSWORD="+password)
}

// A reconnect while uploads are queued (store down, then the server crashes) must never
// let the new session's copy of a segment clobber the queued one: every complete segment
// in the archive equals the server's, and there is no gap.
func TestServerCrashWhileTheStoreIsDownKeepsEverySegmentIntact(t *testing.T) {
	ctx := context.Background()
	minio := harness.StartMinIO(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	setEnv(t, env)
	url := "s3://" + minio.NewBucket(t) + "/db"
	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env, Args: []string{"--partial-interval", "200ms"}})
	first := slotRestart(t, pg).SegmentNo(1 << 20)
	if _, err := pg.Pgbench(ctx, "-i", "-s", "1"); err != nil {
		t.Fatal(err)
	}
	if err := minio.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pgbench(ctx, "-T", "4", "-c", "2"); err != nil {
		t.Fatal(err)
	}
	if v, _ := sc.Metric("kcbackup_spool_bytes"); v < 2<<20 {
		t.Fatalf("spool holds %v bytes; the test needs queued segments", v)
	}
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exec1(t, pg, "CREATE TABLE after AS SELECT generate_series(1, 50000) AS n")
	if err := minio.Start(ctx); err != nil {
		t.Fatal(err)
	}
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 2*time.Minute)
	a := openArchive(t, url)
	dir := t.TempDir()
	fetchAll(t, env, url, 1, first, flush.SegmentNo(1<<20)-1, 1<<20, dir)
	for n := first; n < flush.SegmentNo(1<<20); n++ {
		name := walarchive.SegmentName(1, n, a.SegmentSize())
		got, _ := os.ReadFile(filepath.Join(dir, name))
		if want := serverFile(t, pg, "pg_wal/"+name); !bytes.Equal(got, want) {
			t.Fatalf("archived %s differs from the server's", name)
		}
	}
	assertNoGap(t, env, url, pg, 1, first, flush)
}
