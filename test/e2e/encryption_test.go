package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/kcbackup/kcbackup/test/harness"
)

// writeAgeIdentity writes a new age identity file (as age-keygen does) into dir, readable by
// the postgres user for restore_command, and returns its path and public key.
func writeAgeIdentity(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	content := "# public key: " + id.Recipient().String() + "\n" + id.String() + "\n"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, id.Recipient().String()
}

func TestEncryptedArchiveRestoresWithItsKeyAndFailsClosedWithout(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	root := strings.TrimPrefix(url, "file://")
	keyDir := t.TempDir()
	os.Chmod(keyDir, 0o755)
	keyFile, _ := writeAgeIdentity(t, keyDir, "key.txt")
	wrongKey, _ := writeAgeIdentity(t, keyDir, "wrong.txt")
	withKey := []string{"KCBACKUP_ENCRYPTION_KEY_FILE=" + keyFile}

	pg := harness.StartPostgres(t, pgSettings(nil))
	// Compression off, so that only encryption could hide the marker in the stored objects.
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: withKey, Args: []string{"--compression", "none"}})
	exec1(t, pg, "CREATE TABLE secrets AS SELECT 'plaintext-marker-' || g AS s FROM generate_series(1, 5000) g")
	if _, stderr, code := harness.Kcbackup(t, ctx, append(pg.Env(), withKey...), "backup", "--storage", url); code != 0 {
		t.Fatalf("encrypted backup: %s", stderr)
	}
	exec1(t, pg, "INSERT INTO secrets SELECT 'plaintext-marker-late-' || g FROM generate_series(1, 500) g")
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("plaintext-marker-")) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Without the key, or with another, nothing is listed or restored.
	for _, env := range [][]string{nil, {"KCBACKUP_ENCRYPTION_KEY_FILE=" + wrongKey}} {
		_, stderr, code := harness.Kcbackup(t, ctx, env, "list", "--storage", url)
		if code == 0 || !strings.Contains(stderr, "encrypted") {
			t.Fatalf("list with %v: exit %d %s; want a refusal naming the encryption", env, code, stderr)
		}
	}
	dir := filepath.Join(t.TempDir(), "pgdata")
	if _, _, code := harness.Kcbackup(t, ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest"); code == 0 {
		t.Fatal("restore without the key succeeded")
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("a restore without the key created the destination")
	}
	// With the key: restore, recovery through the encrypted WAL, all rows back.
	restored, _ := restoreAndStart(t, withKey, url, "latest")
	if got := query(t, restored, "SELECT count(*) FROM secrets"); got != "5500" {
		t.Fatalf("restored %s rows; want 5500", got)
	}
	if out, _, code := harness.Kcbackup(t, ctx, withKey, "verify", "--storage", url); code != 0 {
		t.Fatalf("verify with the key: %s", out)
	}
	checkObjectsWithStandardTools(t, root, keyFile)
}

// checkObjectsWithStandardTools runs `zstd -t` on every object under root, after
// `age -d -i identityFile` when identityFile is given (identity.json is never encrypted).
func checkObjectsWithStandardTools(t *testing.T, root, identityFile string) {
	t.Helper()
	requireRecoveryTools(t)
	n := 0
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || strings.HasPrefix(info.Name(), ".kcbackup-tmp-") {
			return err
		}
		shell := `zstd -q -t < "$1"`
		// identity.json and the writer log (writer/) are never encrypted: they hold no data.
		if identityFile != "" && info.Name() != "identity.json" && filepath.Base(filepath.Dir(p)) != "writer" {
			shell = `set -o pipefail; age -d -i "$2" "$1" | zstd -q -t`
		}
		if out, err := exec.Command("bash", "-c", shell, "check", p, identityFile).CombinedOutput(); err != nil {
			if _, serr := os.Stat(p); os.IsNotExist(serr) {
				return nil // a partial superseded by its complete segment meanwhile
			}
			t.Errorf("%s: %s: %v %s", p, shell, err, out)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Fatalf("checked only %d objects under %s", n, root)
	}
	t.Logf("%d objects pass zstd -t (encrypted: %v)", n, identityFile != "")
}

func TestSidecarArchivesWithOnlyTheRecipientAndRestoresNeedTheIdentity(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	onlyRecipient, withIdentity := recipientAndIdentity(t)

	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: onlyRecipient})
	exec1(t, pg, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
	// The backup is taken by a host that holds the identity (it waits for WAL by reading
	// the archive); the sidecar itself never could decrypt what it wrote.
	id, stderr, code := harness.Kcbackup(t, ctx, append(pg.Env(), withIdentity...), "backup", "--storage", url)
	if code != 0 {
		t.Fatalf("backup: %s", stderr)
	}
	record := "backups/" + strings.TrimSpace(id) + "/backup.json"
	exec1(t, pg, "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	if out, stderr, code := harness.Kcbackup(t, ctx, onlyRecipient, "cat", "--storage", url, record); code == 0 || !strings.Contains(stderr, "identity") || out != "" {
		t.Fatalf("cat %s with only the recipient: exit %d, %d bytes out, %s; want a refusal asking for the identity", record, code, len(out), stderr)
	}
	if out, stderr, code := harness.Kcbackup(t, ctx, withIdentity, "cat", "--storage", url, record); code != 0 || !strings.Contains(out, `"stopLSN"`) {
		t.Fatalf("cat %s with the identity: exit %d %s %s; want the backup record", record, code, out, stderr)
	}
	restored, _ := restoreAndStart(t, withIdentity, url, "latest")
	if got := query(t, restored, "SELECT count(*) FROM t"); got != "1500" {
		t.Fatalf("restored %s rows; want 1500", got)
	}
}

// A sidecar that holds only the recipients cannot read the partial an earlier run stored:
// after a restart it must neither stall nor shrink it. The segment is stored when complete.
func TestRecipientOnlySidecarKeepsArchivingAfterARestart(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	onlyRecipient, withIdentity := recipientAndIdentity(t)

	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: onlyRecipient, Args: []string{"--partial-interval", "200ms"}})
	exec1(t, pg, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
	if _, stderr, code := harness.Kcbackup(t, ctx, append(pg.Env(), withIdentity...), "backup", "--storage", url); code != 0 {
		t.Fatalf("backup: %s", stderr)
	}
	exec1(t, pg, "INSERT INTO t VALUES (1001)")
	waitArchived(t, sc, flushLSN(t, pg), time.Minute) // a partial of the current segment is stored
	if err := sc.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	sc.WaitReady(time.Minute)
	exec1(t, pg, "INSERT INTO t VALUES (1002); SELECT pg_switch_wal()")
	exec1(t, pg, "INSERT INTO t VALUES (1003)")
	waitArchived(t, sc, flushLSN(t, pg), 2*time.Minute)
	restored, _ := restoreAndStart(t, withIdentity, url, "latest")
	if got := query(t, restored, "SELECT count(*) FROM t"); got != "1003" {
		t.Fatalf("restored %s rows; want 1003", got)
	}
}

// recipientAndIdentity makes an age identity and returns the environment that gives kcbackup
// only its recipient (public key), and the one that gives it the identity.
func recipientAndIdentity(t *testing.T) (onlyRecipient, withIdentity []string) {
	t.Helper()
	keyDir := t.TempDir()
	os.Chmod(keyDir, 0o755)
	idFile, pub := writeAgeIdentity(t, keyDir, "key.txt")
	rcptFile := filepath.Join(keyDir, "recipients.txt")
	if err := os.WriteFile(rcptFile, []byte(pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"KCBACKUP_ENCRYPTION_RECIPIENT_FILE=" + rcptFile}, []string{"KCBACKUP_ENCRYPTION_KEY_FILE=" + idFile}
}
