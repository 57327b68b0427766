package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// recoveryTools are the standard tools docs/RECOVERY.md relies on, with their Debian packages.
var recoveryTools = map[string]string{"zstd": "zstd", "age": "age", "tar": "tar", "curl": "curl", "truncate": "coreutils", "sha256sum": "coreutils", "od": "coreutils"}

// requireRecoveryTools fails (CI=true) or skips the test naming the apt-get line when a
// tool of the manual recovery is missing.
func requireRecoveryTools(t *testing.T) {
	t.Helper()
	var missing, pkgs []string
	for tool, pkg := range recoveryTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
			pkgs = append(pkgs, pkg)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		harness.Require(t, "the manual recovery tools", fmt.Errorf("%s missing: apt-get install -y %s", strings.Join(missing, ", "), strings.Join(pkgs, " ")))
	}
}

// recoveryScript writes the script of docs/RECOVERY.md, exactly as the page shows it, to an
// executable file the postgres user can run.
func recoveryScript(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "docs", "RECOVERY.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```sh\n#!/bin/sh\n# kcb-recover.sh")
	script, _, ok2 := strings.Cut(rest, "\n```")
	if !ok || !ok2 {
		t.Fatal("docs/RECOVERY.md has no ```sh block starting with #!/bin/sh and # kcb-recover.sh")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "kcb-recover.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n# kcb-recover.sh"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// manualArchive is how the manual recovery reaches one archive: the script's environment,
// and a listing of backups (ls for a directory, an S3 client's listing for a bucket).
type manualArchive struct {
	env         []string
	listBackups func(t *testing.T) []string
}

// recoverManually follows docs/RECOVERY.md section 3 and returns the started server.
func recoverManually(t *testing.T, script string, arch manualArchive, target time.Time) *harness.Postgres {
	t.Helper()
	work := t.TempDir()
	get := func(key, dest string) {
		t.Helper()
		cmd := exec.Command(script, "get", key, dest)
		cmd.Env = append(os.Environ(), arch.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcb-recover.sh get %s: %v\n%s", key, err, out)
		}
	}
	// Step 1: the identity, for the segment size.
	get(walarchive.IdentityKey, filepath.Join(work, "identity.json"))
	var id walarchive.Identity
	readJSON(t, filepath.Join(work, "identity.json"), &id)

	// Step 2: the newest backup that stopped before the target.
	var chosen *walarchive.BackupRecord
	for _, bid := range arch.listBackups(t) {
		var rec walarchive.BackupRecord
		p := filepath.Join(work, bid+".json")
		get(walarchive.BackupRecordKey(bid), p)
		readJSON(t, p, &rec)
		if !rec.StopTime.After(target) && (chosen == nil || rec.StopTime.After(chosen.StopTime)) {
			chosen = &rec
		}
	}
	if chosen == nil {
		t.Fatalf("no backup stopped before %s", target)
	}

	// Step 3: unpack base.tar, and the manifest beside it.
	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "restored")
	os.Mkdir(dir, 0o700)
	get(walarchive.BackupPrefix(chosen.ID)+"base.tar", filepath.Join(work, "base.tar"))
	runCmd(t, "tar", "-x", "-C", dir, "-f", filepath.Join(work, "base.tar"))
	get(walarchive.BackupPrefix(chosen.ID)+"backup_manifest", filepath.Join(dir, "backup_manifest"))

	// Step 4: PostgreSQL's own check of the backup.
	pgBin := filepath.Join(os.Getenv("KCBACKUP_PG_BINDIR"))
	if pgBin == "" {
		pgBin = "/usr/lib/postgresql/15/bin"
	}
	runCmd(t, filepath.Join(pgBin, "pg_verifybackup"), "-n", dir)

	// Step 5: restore_command through the script, recovery to the target time.
	conf := fmt.Sprintf("restore_command = '%s KCB_SEGMENT_SIZE=%d %s wal %%f %%p'\nrecovery_target_time = '%s'\nrecovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n",
		strings.Join(arch.env, " "), id.WALSegmentSize, script, target.UTC().Format("2006-01-02 15:04:05.999999-07:00"))
	f, err := os.OpenFile(filepath.Join(dir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(conf)
	f.Close()
	os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600)

	// Step 6: start it; it replays to the target and promotes.
	pg := harness.StartFromDataDir(t, dir, harness.PGOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := pg.WaitPromoted(ctx); err != nil {
		t.Fatalf("manually restored server did not promote: %v\n%s", err, pg.Log())
	}
	return pg
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// archiveRowsAroundTarget writes rows before and after a target time into a backed-up,
// archived cluster and returns the target and the row count at it.
func archiveRowsAroundTarget(t *testing.T, pg *harness.Postgres, sc *harness.Sidecar, env []string, url string) (time.Time, string) {
	t.Helper()
	ctx := context.Background()
	exec1(t, pg, "CREATE TABLE realm_user (id int PRIMARY KEY, created timestamptz DEFAULT clock_timestamp())")
	exec1(t, pg, "INSERT INTO realm_user (id) SELECT g FROM generate_series(1, 300) g")
	if _, stderr, code := harness.Kcbackup(t, ctx, append(pg.Env(), env...), "backup", "--storage", url); code != 0 {
		t.Fatalf("backup: %s", stderr)
	}
	exec1(t, pg, "INSERT INTO realm_user (id) SELECT g FROM generate_series(301, 700) g")
	// The target lies strictly between the last commit before it and the first after it:
	// the server's clock is read after the commit and waited past before the next one.
	target := lsnTime(t, pg)
	for !lsnTime(t, pg).After(target) {
		time.Sleep(time.Millisecond)
	}
	exec1(t, pg, "DELETE FROM realm_user WHERE id <= 650")
	exec1(t, pg, "INSERT INTO realm_user (id) SELECT g FROM generate_series(701, 900) g")
	waitArchived(t, sc, flushLSN(t, pg), 60*time.Second)
	return target, "700"
}

func lsnTime(t *testing.T, pg *harness.Postgres) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, query(t, pg, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestManualRecoveryWithStandardToolsFromAFileArchive(t *testing.T) {
	requireRecoveryTools(t)
	script := recoveryScript(t)
	url := fileArchive(t)
	root := strings.TrimPrefix(url, "file://")
	pg := harness.StartPostgres(t, pgSettings(nil))
	// Uncompressed, so the raw-block form of objects is what the script reads.
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--compression", "none"}})
	target, want := archiveRowsAroundTarget(t, pg, sc, nil, url)

	restored := recoverManually(t, script, manualArchive{
		env: []string{"KCB_ARCHIVE=" + root},
		listBackups: func(t *testing.T) []string {
			entries, err := os.ReadDir(filepath.Join(root, "backups"))
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, e := range entries {
				ids = append(ids, e.Name())
			}
			return ids
		},
	}, target)
	if got := query(t, restored, "SELECT count(*) FROM realm_user"); got != want {
		t.Fatalf("manually restored to %s: %s rows; want %s", target, got, want)
	}

	checkObjectsWithStandardTools(t, root, "")

	// The script's own checks: a changed checksum in the trailer (which zstd skips) fails
	// with status 2, a missing object is status 1.
	bad := t.TempDir()
	obj, err := os.ReadFile(filepath.Join(root, walarchive.IdentityKey))
	if err != nil {
		t.Fatal(err)
	}
	obj[len(obj)-30] ^= 1
	os.WriteFile(filepath.Join(bad, walarchive.IdentityKey), obj, 0o644)
	for key, wantCode := range map[string]int{walarchive.IdentityKey: 2, "backups/none/backup.json": 1} {
		cmd := exec.Command(script, "get", key, filepath.Join(t.TempDir(), "out"))
		cmd.Env = append(os.Environ(), "KCB_ARCHIVE="+bad)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != wantCode {
			t.Errorf("kcb-recover.sh get %s: exit %d (%s); want %d", key, code, out, wantCode)
		}
	}
}

func TestManualRecoveryWithStandardToolsFromAnEncryptedMinIOArchive(t *testing.T) {
	requireRecoveryTools(t)
	script := recoveryScript(t)
	m := harness.StartMinIO(t)
	bucket := m.NewBucket(t)
	url := "s3://" + bucket + "/db"
	keyDir := t.TempDir()
	os.Chmod(keyDir, 0o755)
	idFile, _ := writeAgeIdentity(t, keyDir, "key.txt")
	// The curl config holds the S3 secret; it is readable by the postgres user only.
	curlCfg := filepath.Join(keyDir, "s3.curl")
	os.WriteFile(curlCfg, []byte(fmt.Sprintf("user = \"%s:%s\"\n", m.AccessKey(), m.SecretKey())), 0o600)
	runCmd(t, "chown", "postgres:", curlCfg)

	env := append(m.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true", "KCBACKUP_ENCRYPTION_KEY_FILE="+idFile)
	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env})
	target, want := archiveRowsAroundTarget(t, pg, sc, env, url)

	restored := recoverManually(t, script, manualArchive{
		env: []string{"KCB_S3=" + m.Endpoint() + "/" + bucket + "/db", "KCB_S3_REGION=" + harness.MinIORegion,
			"KCB_S3_CURL_CONFIG=" + curlCfg, "KCB_AGE_IDENTITY=" + idFile},
		listBackups: func(t *testing.T) []string {
			out, err := m.Client().ListObjectsV2(context.Background(), &awss3.ListObjectsV2Input{
				Bucket: aws.String(bucket), Prefix: aws.String("db/backups/"), Delimiter: aws.String("/")})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, p := range out.CommonPrefixes {
				ids = append(ids, strings.TrimSuffix(strings.TrimPrefix(aws.ToString(p.Prefix), "db/backups/"), "/"))
			}
			return ids
		},
	}, target)
	if got := query(t, restored, "SELECT count(*) FROM realm_user"); got != want {
		t.Fatalf("manually restored to %s: %s rows; want %s", target, got, want)
	}
}
