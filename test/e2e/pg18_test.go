package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// PostgreSQL 18 invalidates a slot idle for idle_replication_slot_timeout at a checkpoint,
// leaving its restart_lsn set. The sidecar, started again, must see the invalidation,
// count the hole (kcbackup_archive_gaps_total, which alerts) and archive again. The alert
// gauges behind the backup alerts are read back from the archive after a restart (issue 19).
func TestIdleSlotTimeoutOnPostgreSQL18IsCountedAsAGap(t *testing.T) {
	versions, err := harness.SelectedPGVersions()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(versions, 18) {
		if harness.InCI() {
			t.Fatalf("PostgreSQL 18 is not among the selected versions %v", versions)
		}
		t.Skipf("PostgreSQL 18 is not among the selected versions %v (KCBACKUP_PG_VERSIONS)", versions)
	}
	func(v int) {
		url := fileArchive(t)
		pg := harness.StartPostgres(t, pgSettingsOn(v, map[string]string{"idle_replication_slot_timeout": "1s"}))
		sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
		takeBackup(t, pg, url, nil)
		waitArchived(t, sc, flushLSN(t, pg), time.Minute)
		if err := sc.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for query(t, pg, "SELECT coalesce(invalidation_reason, '') FROM pg_replication_slots WHERE slot_name = 'kcbackup'") != "idle_timeout" {
			if time.Now().After(deadline) {
				t.Fatal("the server did not invalidate the idle slot")
			}
			exec1(t, pg, "CREATE TABLE IF NOT EXISTS idle (n int); INSERT INTO idle VALUES (1); SELECT pg_switch_wal(); CHECKPOINT")
			time.Sleep(200 * time.Millisecond) // the timeout counts whole seconds of idleness
		}
		if err := sc.Start(); err != nil {
			t.Fatal(err)
		}
		sc.WaitReady(2 * time.Minute)
		exec1(t, pg, "INSERT INTO idle VALUES (2)")
		waitArchived(t, sc, flushLSN(t, pg), 2*time.Minute)
		gaps, err := sc.Metric("kcbackup_archive_gaps_total")
		if err != nil || gaps < 1 {
			t.Fatalf("kcbackup_archive_gaps_total = %v, %v; want the invalidated slot counted\n%s", gaps, err, sc.Log())
		}
		// A restarted sidecar reads the last backup's time back from the archive, so the
		// stale-backup alert does not go blind (the hole here was filled from the server's
		// WAL, so there is no gap to report: the unit test covers a real one).
		sc.Kill()
		if err := sc.Start(); err != nil {
			t.Fatal(err)
		}
		sc.WaitReady(2 * time.Minute)
		deadline = time.Now().Add(time.Minute)
		for {
			ok, _ := sc.Metric("kcbackup_backup_last_success_timestamp_seconds")
			gap, _ := sc.Metric("kcbackup_archive_gap_last_timestamp_seconds")
			if ok > 0 && gap == 0 {
				break
			}
			if time.Now().After(deadline) {
				list, _, _ := harness.Kcbackup(t, context.Background(), nil, "list", "--storage", url)
				t.Fatalf("after a restart: backup_last_success %v, gap_last %v; want the backup's time read back and no gap (the archive has none)\n%s", ok, gap, list)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}(18)
}
