package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

func takeBackup(t *testing.T, pg *harness.Postgres, url string, env []string) string {
	t.Helper()
	out, stderr, code := harness.Kcbackup(t, context.Background(), append(pg.Env(), env...), "backup", "--storage", url)
	if code != 0 {
		t.Fatalf("backup exited %d: %s", code, stderr)
	}
	return strings.TrimSpace(out)
}

func TestRestoreLatestAfterPrimaryKilledLosesAtMostTheArchiveLag(t *testing.T) {
	harness.ForEachPGVersion(t, testRestoreLatestAfterPrimaryKilledLosesAtMostTheArchiveLag)
}

func testRestoreLatestAfterPrimaryKilledLosesAtMostTheArchiveLag(t *testing.T, version int) {
	ctx := context.Background()
	minio := harness.StartMinIO(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	setEnv(t, env)
	url := "s3://" + minio.NewBucket(t) + "/keycloak-db"
	const partial = 200 * time.Millisecond
	pg := harness.StartPostgres(t, pgSettingsOn(version, nil))
	harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env, Args: []string{"--partial-interval", partial.String()}})
	createLedger(t, pg)
	takeBackup(t, pg, url, env)
	l := startLedger(t, pg)
	bench := pgbenchFor(t, pg, "3")
	time.Sleep(3 * time.Second)
	killedAt := time.Now()
	if err := pg.Stop(ctx, "immediate"); err != nil { // the primary dies under load
		t.Fatal(err)
	}
	l.Stop()
	<-bench
	time.Sleep(2 * partial) // the sidecar uploads what it had received

	must := l.ackedBefore(killedAt.Add(-partial))
	restored, _ := restoreAndStart(t, env, url, "latest")
	present := query(t, restored, fmt.Sprintf("SELECT count(*) FROM ledger WHERE id <= %d", must[len(must)-1]))
	if present != fmt.Sprint(len(must)) {
		t.Fatalf("restore to latest holds %s of the %d rows acknowledged more than %s before the kill", present, len(must), partial)
	}
	all := l.ackedBefore(killedAt.Add(time.Hour))
	got := query(t, restored, "SELECT count(*) FROM ledger")
	t.Logf("rows acknowledged before the kill: %d; restored: %s (at least %d required)", len(all), got, len(must))
}

func TestRestoreTwiceAndToAPointOnTheOldTimeline(t *testing.T) {
	harness.ForEachPGVersion(t, testRestoreTwiceAndToAPointOnTheOldTimeline)
}

func testRestoreTwiceAndToAPointOnTheOldTimeline(t *testing.T, version int) {
	ctx := context.Background()
	url := fileArchive(t)
	p := harness.StartPostgres(t, pgSettingsOn(version, nil))
	ps := harness.StartSidecar(t, p, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	createLedger(t, p)
	takeBackup(t, p, url, nil)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 100)")
	time.Sleep(50 * time.Millisecond)
	t1 := time.Now().UTC()
	time.Sleep(50 * time.Millisecond)
	exec1(t, p, "INSERT INTO ledger (note) SELECT 'after t1 on timeline 1' FROM generate_series(1, 10)")
	waitArchivedPG(t, p, url)

	// Restore 1: to t1, promoted on timeline 2, archiving into the same archive. The old
	// server is gone for good: the restore hands the archive over to the restored one.
	if err := ps.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	r1, _ := restoreAndStart(t, nil, url, t1.Format(time.RFC3339Nano), "--handover")
	if got := query(t, r1, "SELECT count(*) FROM ledger"); got != "100" {
		t.Fatalf("restore to t1 holds %s rows; want 100", got)
	}
	if tl := query(t, r1, "SELECT timeline_id FROM pg_control_checkpoint()"); tl != "2" {
		exec1(t, r1, "CHECKPOINT")
	}
	// The restore's recovery_end_command removed its recovery settings: a standby cloned
	// from r1 would inherit postgresql.auto.conf.
	if left := query(t, r1, `SELECT coalesce(string_agg(name, ', '), '') FROM pg_file_settings
		WHERE (name LIKE 'recovery_target%' OR name IN ('restore_command', 'recovery_end_command')) AND sourcefile LIKE '%postgresql.auto.conf'`); left != "" {
		t.Fatalf("after promotion, postgresql.auto.conf still sets %s", left)
	}
	if got := query(t, r1, "SELECT setting FROM pg_file_settings WHERE name = 'archive_mode' AND sourcefile LIKE '%postgresql.auto.conf'"); got != "off" {
		t.Fatalf("after promotion, postgresql.auto.conf sets archive_mode to %q; want off (the sidecar archives)", got)
	}
	sc1 := harness.StartSidecar(t, r1, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	exec1(t, r1, "INSERT INTO ledger (note) SELECT 'on timeline 2' FROM generate_series(1, 7)")
	waitArchived(t, sc1, flushLSN(t, r1), time.Minute)
	if st, _ := sc1.Status(ctx); st.Timeline != 2 {
		t.Fatalf("the restored server's sidecar archives timeline %d; want 2", st.Timeline)
	}

	// Restore 2: latest along timeline 2, promoted on timeline 3.
	r2, _ := restoreAndStart(t, nil, url, "latest")
	if got := query(t, r2, "SELECT count(*) FILTER (WHERE note = 'on timeline 2') || '/' || count(*) FROM ledger"); got != "7/107" {
		t.Fatalf("restore along timeline 2 holds %s (timeline-2 rows/all); want 7/107", got)
	}
	exec1(t, r2, "CHECKPOINT")
	if tl := query(t, r2, "SELECT timeline_id FROM pg_control_checkpoint()"); tl != "3" {
		t.Fatalf("second restore promoted to timeline %s; want 3", tl)
	}

	// Restore 3: a point on the old timeline 1, after the branch: it still holds the rows
	// written on timeline 1 after t1.
	r3, _ := restoreAndStart(t, nil, url, "latest", "--timeline", "1")
	if got := query(t, r3, "SELECT count(*) FROM ledger WHERE note = 'after t1 on timeline 1'"); got != "10" {
		t.Fatalf("restore along timeline 1 holds %s of its 10 later rows", got)
	}
}

// waitArchivedPG waits until the archive holds the server's current WAL (by exact keys).
func waitArchivedPG(t *testing.T, pg *harness.Postgres, url string) {
	t.Helper()
	flush := flushLSN(t, pg)
	a := openArchive(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitForWAL(ctx, 1, flush.SegmentStart(a.SegmentSize()), flush); err != nil {
		t.Fatal(err)
	}
}

func TestRestoredBackupPassesVerifybackupAndAmcheck(t *testing.T) {
	harness.ForEachPGVersion(t, testRestoredBackupPassesVerifybackupAndAmcheck)
}

func testRestoredBackupPassesVerifybackupAndAmcheck(t *testing.T, version int) {
	ctx := context.Background()
	url := fileArchive(t)
	// PostgreSQL 18's initdb enables data checksums by default: 18 runs with that default.
	pg := harness.StartPostgres(t, harness.PGOptions{Version: version, WALSegmentSizeMB: 1, DataChecksums: version < 18, Settings: pgSettings(nil).Settings})
	harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url})
	if _, err := pg.Pgbench(ctx, "-i", "-s", "2"); err != nil {
		t.Fatal(err)
	}
	takeBackup(t, pg, url, nil)
	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "pgdata")
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest", "--owner", "postgres"); code != 0 {
		t.Fatalf("restore: %s", stderr)
	}
	// pg_verifybackup checks every file against the server's manifest (WAL is checked by
	// recovery itself, from the archive).
	out, err := pg.Command(ctx, "pg_verifybackup", "--no-parse-wal", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "successfully verified") {
		t.Fatalf("pg_verifybackup: %v\n%s", err, out)
	}
	restored := harness.StartFromDataDir(t, dir, harness.PGOptions{})
	if err := restored.WaitPromoted(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(t, restored, "SHOW data_checksums"); got != "on" {
		t.Fatalf("restored cluster has data_checksums = %s; want on", got)
	}
	amcheck := restored.Command(ctx, "pg_amcheck", "--install-missing", "--heapallindexed", "-d", "postgres")
	amcheck.Env = append(amcheck.Env, restored.Env()...)
	if out, err := amcheck.CombinedOutput(); err != nil {
		t.Fatalf("pg_amcheck on the restored cluster: %v\n%s", err, out)
	}
	if got := query(t, restored, "SELECT count(*) FROM pgbench_accounts"); got != "200000" {
		t.Fatalf("restored pgbench_accounts has %s rows", got)
	}
}

func TestCorruptObjectsAreNamedAndNeverRestored(t *testing.T) {
	harness.ForEachPGVersion(t, testCorruptObjectsAreNamedAndNeverRestored)
}

func testCorruptObjectsAreNamedAndNeverRestored(t *testing.T, version int) {
	ctx := context.Background()
	url := fileArchive(t)
	root := strings.TrimPrefix(url, "file://")
	pg := harness.StartPostgres(t, pgSettingsOn(version, nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url})
	exec1(t, pg, "CREATE TABLE t AS SELECT generate_series(1, 100000) AS n")
	id := takeBackup(t, pg, url, nil)
	exec1(t, pg, "INSERT INTO t SELECT generate_series(1, 100000)")
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	if out, _, code := harness.Kcbackup(t, ctx, nil, "verify", "--storage", url); code != 0 {
		t.Fatalf("verify of a healthy archive failed:\n%s", out)
	}
	// Flip one byte in the middle of a backup object and of a complete WAL segment.
	a := openArchive(t, url)
	backupKey := walarchive.BackupPrefix(id) + "base.tar"
	segs, _ := a.Storage.List(ctx, walarchive.TimelineDir(1))
	var walKey string
	for _, o := range segs {
		if f, err := walarchive.ParseWALKey(o.Key, a.SegmentSize()); err == nil && f.Kind == walarchive.WALFileSegment {
			walKey = o.Key
		}
	}
	for _, key := range []string{backupKey, walKey} {
		flipByte(t, filepath.Join(root, key))
	}
	out, _, code := harness.Kcbackup(t, ctx, nil, "verify", "--storage", url)
	if code == 0 || !strings.Contains(out, backupKey) || !strings.Contains(out, walKey) {
		t.Fatalf("verify did not name both corrupt objects (exit %d):\n%s", code, out)
	}
	// wal-fetch refuses the corrupt segment with a status that stops recovery.
	name := filepath.Base(walKey)
	_, stderr, code := harness.Kcbackup(t, ctx, nil, "wal-fetch", "--storage", url, name, filepath.Join(t.TempDir(), name))
	if code != 255 || !strings.Contains(stderr, walKey) {
		t.Fatalf("wal-fetch of a corrupt segment: exit %d, %s", code, stderr)
	}
	// restore names the corrupt backup object and leaves the destination untouched.
	dir := filepath.Join(t.TempDir(), "pgdata")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "keep-me"), []byte("old data"), 0o600)
	_, stderr, code = harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest", "--move-aside")
	if code == 0 || !strings.Contains(stderr, backupKey) {
		t.Fatalf("restore from a corrupt backup: exit %d, %s", code, stderr)
	}
	assertUntouched(t, dir)
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

func assertUntouched(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	if b, err := os.ReadFile(filepath.Join(dir, "keep-me")); err != nil || string(b) != "old data" || len(entries) != 1 {
		t.Fatalf("destination %s was touched: %v entries", dir, len(entries))
	}
	siblings, _ := filepath.Glob(dir + ".kcbackup-*")
	if len(siblings) != 0 {
		t.Fatalf("restore left %v behind", siblings)
	}
}

func TestRestoreRefusesTargetsOutsideTheWindowBeforeTouchingAnything(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url})
	beforeBackup := time.Now().UTC().Add(-time.Minute)
	takeBackup(t, pg, url, nil)
	exec1(t, pg, "CREATE TABLE t (n int)")
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)
	dir := filepath.Join(t.TempDir(), "pgdata")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "keep-me"), []byte("old data"), 0o600)
	for _, tc := range []struct{ to, want string }{
		{beforeBackup.Format(time.RFC3339), "before the oldest usable backup"},
		{time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "in the future"},
		{time.Now().Format("2006-01-02T15:04:05"), "no time zone"},
		{"yesterday", "expected 'latest' or an RFC 3339 time"},
	} {
		_, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", tc.to, "--move-aside")
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("--to %s: exit %d, %q; want an error mentioning %q", tc.to, code, stderr, tc.want)
		}
		assertUntouched(t, dir)
	}
	// The sidecar's dry-run plan (what the operator asks before it stops anything) runs the
	// same planner: the same refusals, as refusals (422), and the plan the restore makes.
	api := apiclient.New(sc.URL(), sc.Token(), nil)
	for _, tc := range []struct{ to, want string }{
		{beforeBackup.Format(time.RFC3339), "before the oldest usable backup"},
		{time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "in the future"},
	} {
		_, err := api.PlanRestore(ctx, apiclient.RestorePlanRequest{Target: tc.to})
		if !errors.Is(err, apiclient.ErrPlanRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dry-run plan to %s: %v; want a refusal mentioning %q", tc.to, err, tc.want)
		}
	}
	plan, err := api.PlanRestore(ctx, apiclient.RestorePlanRequest{Target: "latest"})
	if err != nil || plan.BackupID == "" || plan.Timeline != 1 || plan.Stop != "end of WAL" {
		t.Errorf("dry-run plan to latest: %+v, %v; want the backup on timeline 1, replaying to the end of WAL", plan, err)
	}
	// Without --move-aside a non-empty directory is refused, also before anything else.
	_, stderr, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest")
	if code == 0 || !strings.Contains(stderr, "--move-aside") {
		t.Fatalf("non-empty --pgdata without --move-aside: exit %d, %s", code, stderr)
	}
	assertUntouched(t, dir)
}

func TestSecondBackupIsRefusedAndAKilledBackupIsNeverListed(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(map[string]string{"max_wal_size": "1GB"}))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url})
	if _, err := pg.Pgbench(ctx, "-i", "-s", "30"); err != nil {
		t.Fatal(err)
	}
	// Step 1: a backup through the API, and a second request while it runs.
	client := sc.Client()
	job, err := client.StartBackup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.StartBackup(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second API backup: err = %v; want 'already running'", err)
	}
	// The CLI is refused too (the lock is on the server, across processes).
	_, stderr, code := harness.Kcbackup(t, ctx, pg.Env(), "backup", "--storage", url)
	if code != 3 || !strings.Contains(stderr, "already running") {
		t.Fatalf("CLI backup during an API backup: exit %d, %s", code, stderr)
	}
	for !job.Done() {
		time.Sleep(200 * time.Millisecond)
		if job, err = client.Backup(ctx, job.ID); err != nil {
			t.Fatal(err)
		}
	}
	if job.State != apiclient.StateCompleted || job.Backup == nil {
		t.Fatalf("API backup ended %+v", job)
	}

	// Step 2: a backup killed halfway leaves no listed backup; the next one succeeds.
	cmd := exec.Command(harness.KcbackupBinary(t), "backup", "--storage", url)
	cmd.Env = append(os.Environ(), pg.Env()...)
	var cliErr bytes.Buffer
	cmd.Stderr = &cliErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitForObject(t, strings.TrimPrefix(url, "file://"), "base.tar", job.ID, exited, &cliErr)
	cmd.Process.Kill()
	<-exited
	// The killed backup's backend releases the backup lock when it sees its client gone:
	// soon, not at once (a backup started right after the kill was refused as "already
	// running" under load). Nothing else holds an advisory lock here.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		n, err := pg.QueryString(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
		if err == nil && n == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed backup's lock is still held a minute later (advisory locks %q, %v)", n, err)
		}
	}
	a := openArchive(t, url)
	backups, _, _ := a.Backups(ctx)
	if len(backups) != 1 || backups[0].ID != job.ID {
		t.Fatalf("after a killed backup the archive lists %d backups: %+v", len(backups), backups)
	}
	id := takeBackup(t, pg, url, nil)
	backups, _, _ = a.Backups(ctx)
	if len(backups) != 2 || backups[1].ID != id {
		t.Fatalf("a backup after the killed one is not listed: %+v", backups)
	}
	resp, err := http.Get(sc.URL() + "/v1/status")
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/v1/status without a token: %v %v; want 401", resp, err)
	}
}

// waitForObject waits until a backup other than skipID has started writing name. The
// backup's process must not end first: exited reports its end, stderr what it said.
func waitForObject(t *testing.T, root, name, skipID string, exited chan error, stderr *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the backup ended (%v) before it wrote %s: %s", err, name, stderr.String())
		default:
		}
		matches, _ := filepath.Glob(filepath.Join(root, "backups", "*", ".kcbackup-tmp-"+name+"-*"))
		for _, m := range matches {
			if !strings.Contains(m, skipID) {
				if fi, err := os.Stat(m); err == nil && fi.Size() > 1<<20 {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the second backup never started writing its data")
}
