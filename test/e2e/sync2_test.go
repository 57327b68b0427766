package e2e

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// archivedCommitTimes scans the archive's WAL of timeline 1, from its first segment to the
// end of its continuous run, and returns the commit timestamps it holds.
func archivedCommitTimes(t *testing.T, url string) map[string]bool {
	t.Helper()
	ctx := context.Background()
	a := openArchive(t, url)
	objs, err := a.Storage.List(ctx, walarchive.TimelineDir(1))
	if err != nil || len(objs) == 0 {
		t.Fatalf("list archived WAL: %d objects, %v", len(objs), err)
	}
	f, err := walarchive.ParseWALKey(objs[0].Key, a.SegmentSize())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := a.Path(ctx, 1)
	end, err := a.WALReach(ctx, p, f.SegNo)
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	for n := f.SegNo; n <= end.LastSegment; n++ {
		if _, err := a.FetchWALFile(ctx, walarchive.SegmentName(1, n, a.SegmentSize()), &stream); err != nil {
			t.Fatal(err)
		}
	}
	v, err := walarchive.LookupPGVersion(a.Identity.PostgresVersion)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	if _, err := walarchive.ScanXacts(&stream, v, f.SegNo, a.SegmentSize(), func(x walarchive.XactRecord) {
		if x.Commit {
			seen[x.Time.UTC().Format(time.RFC3339Nano)] = true
		}
	}); err != nil {
		t.Fatal(err)
	}
	return seen
}

func commitTimeOf(t *testing.T, pg *harness.Postgres, table string) string {
	t.Helper()
	s := query(t, pg, "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM "+table)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("commit timestamp %q: %v", s, err)
	}
	return ts.UTC().Format(time.RFC3339Nano)
}

// waitReceived waits until the sidecar has received WAL up to end (in its spool).
func waitReceived(t *testing.T, sc *harness.Sidecar, end walarchive.LSN, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := sc.Status(context.Background())
		if err == nil {
			if l, _ := walarchive.ParseLSN(st.ReceivedLSN); l >= end {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar did not receive WAL up to %s within %s", end, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSyncRepWaiters waits until n sessions wait for synchronous replication.
func waitSyncRepWaiters(t *testing.T, pg *harness.Postgres, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if query(t, pg, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == strconv.Itoa(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session waits for synchronous replication after %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A commit waits for the standby before the sidecar has a slot; a WAL switch and a
// checkpoint move the redo point (where a new slot starts) past its WAL. The sidecar, on a
// fresh archive, must archive that WAL before the commit returns: it starts from the oldest
// WAL the server has and never reports its slot's restart point as flushed.
func TestSynchronousModeArchivesACommitThatWaitedBeforeTheSlotExisted(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(map[string]string{"synchronous_standby_names": "kcbackup", "synchronous_commit": "on"}))
	exec1(t, pg, "SET synchronous_commit = local; CREATE TABLE waited (n int)") // no standby yet: only the insert waits
	done := make(chan error, 1)
	go func() { done <- pg.Exec(ctx, "INSERT INTO waited VALUES (1)") }()
	waitSyncRepWaiters(t, pg, 1, time.Minute)
	exec1(t, pg, "SET synchronous_commit = local; SELECT pg_switch_wal(); CHECKPOINT")
	harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "0"}})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the waiting commit was never released after the sidecar archived its WAL")
	}
	want := commitTimeOf(t, pg, "waited")
	if !archivedCommitTimes(t, url)[want] {
		t.Fatalf("the commit of %s was released, but its WAL is not in the archive", want)
	}
}

// synchronous_commit = remote_write waits for the standby's write position: the sidecar
// reports the archived position there too, so a commit never returns while the storage is
// down.
func TestRemoteWriteCommitsWaitForTheArchive(t *testing.T) {
	ctx := context.Background()
	minio := harness.StartMinIO(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	url := "s3://" + minio.NewBucket(t) + "/db"
	pg := harness.StartPostgres(t, pgSettings(map[string]string{"synchronous_standby_names": "kcbackup", "synchronous_commit": "remote_write"}))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env, Args: []string{"--partial-interval", "0"}})
	exec1(t, pg, "CREATE TABLE rw (n int)")
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)
	if err := minio.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- pg.Exec(ctx, "INSERT INTO rw VALUES (1)") }()
	waitSyncRepWaiters(t, pg, 1, time.Minute)
	commitEnd := flushLSN(t, pg)
	// Wait until the sidecar has received the commit and answered the server after that.
	waitReceived(t, sc, commitEnd, 2*time.Minute)
	received := time.Now()
	for {
		r := query(t, pg, "SELECT coalesce(extract(epoch FROM reply_time)::text, '0') FROM pg_stat_replication WHERE application_name = 'kcbackup'")
		if f, _ := strconv.ParseFloat(r, 64); f > float64(received.UnixMicro())/1e6 {
			break
		}
		if time.Since(received) > 2*time.Minute {
			t.Fatal("the sidecar sent no status update after receiving the commit")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("a remote_write commit returned (%v) while the archive storage was down", err)
	default:
	}
	if w := query(t, pg, "SELECT coalesce(write_lsn::text, '0/0') FROM pg_stat_replication WHERE application_name = 'kcbackup'"); lsn(t, w) >= commitEnd {
		t.Fatalf("the sidecar reports WAL written up to %s while the storage is down (commit ends at %s)", w, commitEnd)
	}
	if err := minio.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the commit was not released after the storage came back")
	}
}

// WAL the sidecar received is flushed on the server: when the connection ends, it is
// uploaded as a partial at once, not thrown away, so losing the server then loses only
// what was never received.
func TestReceivedWALIsUploadedWhenTheServerGoesAway(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "10m"}})
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	// The first bytes of a segment go up at once; after that, only every 10 minutes.
	exec1(t, pg, "INSERT INTO ledger (note) VALUES ('uploaded with the first partial of its segment')")
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)
	exec1(t, pg, "INSERT INTO ledger (note) VALUES ('received, not yet uploaded')")
	end := flushLSN(t, pg)
	waitReceived(t, sc, end, time.Minute)
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	// The partial interval is 10 minutes: only the end of the session uploads the tail.
	a := openArchive(t, url)
	seg := end.SegmentNo(a.SegmentSize())
	deadline := time.Now().Add(2 * time.Minute)
	for {
		tail, err := a.ListTail(ctx, 1, seg)
		_, n := tail.Run()
		if err == nil && walarchive.SegmentStartLSN(seg, a.SegmentSize())+walarchive.LSN(n) >= end {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the received tail up to %s was not uploaded after the server stopped (stored run: %d bytes, %v)\n%s", end, n, err, sc.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	restored, _ := restoreAndStart(t, nil, url, "latest")
	if got := query(t, restored, "SELECT count(*) FROM ledger WHERE note = 'received, not yet uploaded'"); got != "1" {
		t.Fatalf("restore to latest holds %s of the 1 received commit", got)
	}
}
