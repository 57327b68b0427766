package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

func TestSynchronousModeLosesNoAcknowledgedCommit(t *testing.T) {
	harness.ForEachPGVersion(t, testSynchronousModeLosesNoAcknowledgedCommit)
}

func testSynchronousModeLosesNoAcknowledgedCommit(t *testing.T, version int) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettingsOn(version, map[string]string{"synchronous_standby_names": "kcbackup", "synchronous_commit": "on"}))
	harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "0"}})
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	l := startLedger(t, pg)
	// The primary dies mid-load, once at least 100 commits were acknowledged.
	deadline := time.Now().Add(2 * time.Minute)
	for len(l.ackedBefore(time.Now().Add(time.Hour))) < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d commits acknowledged in 2 minutes of synchronous load", len(l.ackedBefore(time.Now().Add(time.Hour))))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	l.Stop()
	acked := l.ackedBefore(time.Now().Add(time.Hour))
	restored, _ := restoreAndStart(t, nil, url, "latest")
	got := query(t, restored, fmt.Sprintf("SELECT count(*) FROM ledger WHERE id <= %d", acked[len(acked)-1]))
	if got != fmt.Sprint(len(acked)) {
		t.Fatalf("synchronous mode lost commits: %s of %d acknowledged rows restored", got, len(acked))
	}
	t.Logf("all %d acknowledged commits restored", len(acked))
}

func TestReplicationRoleWithoutSuperuserArchivesAndBacksUp(t *testing.T) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(nil))
	if err := pg.CreateRole(ctx, "pw_backup", "s3cret-Pass", true); err != nil {
		t.Fatal(err)
	}
	if got := query(t, pg, "SELECT rolsuper::text || rolreplication::text FROM pg_roles WHERE rolname = 'pw_backup'"); got != "falsetrue" {
		t.Fatalf("role attributes %s; want a non-superuser with REPLICATION", got)
	}
	env := pgEnv(pg, "pw_backup", "s3cret-Pass")
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env})
	exec1(t, pg, "CREATE TABLE t AS SELECT generate_series(1, 10000) AS n")
	out, stderr, code := harness.Kcbackup(t, ctx, env, "backup", "--storage", url)
	if code != 0 {
		t.Fatalf("backup as a REPLICATION role: %s", stderr)
	}
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)
	if strings.Contains(sc.Log(), "s3cret-Pass") || strings.Contains(stderr, "s3cret-Pass") {
		t.Fatal("the password appears in a log")
	}
	t.Logf("backup %s taken as pw_backup", strings.TrimSpace(out))
}
