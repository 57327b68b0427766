package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// TestRestoreToATransactionHoldsItsRowsAndNoneAfter is the operator's restore drill in
// small: production marks one transaction (txid_current() and pg_current_wal_lsn() inside
// it), goes on committing, and a restore to xid:<X>@<LSN> holds exactly the rows committed
// up to and including that transaction. Rows committed after it are archived before the
// restore, so a restore that ignored the target (replayed to the end) fails the test.
func TestRestoreToATransactionHoldsItsRowsAndNoneAfter(t *testing.T) {
	harness.ForEachPGVersion(t, testRestoreToATransactionHoldsItsRowsAndNoneAfter)
}

func testRestoreToATransactionHoldsItsRowsAndNoneAfter(t *testing.T, version int) {
	ctx := context.Background()
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettingsOn(version, nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)

	// Step 1: rows before, each its own transaction, then the marked transaction.
	for i := 0; i < 20; i++ {
		exec1(t, pg, fmt.Sprintf("INSERT INTO ledger (note) VALUES ('before %d')", i))
	}
	conn, err := pgx.Connect(ctx, pg.ConnString("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	xid, at := markedTransaction(t, conn, "COMMIT", "marker")
	markerID := query(t, pg, "SELECT id FROM ledger WHERE note = 'marker'")

	// Step 2: rows after it, a transaction that aborts, then more rows, all archived.
	for i := 0; i < 20; i++ {
		exec1(t, pg, fmt.Sprintf("INSERT INTO ledger (note) VALUES ('after %d')", i))
	}
	aborted, abortedAt := markedTransaction(t, conn, "ROLLBACK", "rolled back")
	exec1(t, pg, "INSERT INTO ledger (note) SELECT 'after, in bulk' FROM generate_series(1, 100)")
	waitArchived(t, sc, flushLSN(t, pg), time.Minute)
	if got := query(t, pg, "SELECT count(*) FILTER (WHERE note LIKE 'after%') FROM ledger"); got != "120" {
		t.Fatalf("production holds %s rows after the marker; want 120", got)
	}

	// Step 3: the sidecar's dry-run plan resolves the commit, after the marked LSN.
	target := fmt.Sprintf("xid:%d@%s", xid, at)
	api := apiclient.New(sc.URL(), sc.Token(), nil)
	plan, err := api.PlanRestore(ctx, apiclient.RestorePlanRequest{Target: target})
	if err != nil || plan.Stop != "LSN" || plan.CommitLSN == "" || plan.CommitTime.IsZero() || lsn(t, plan.CommitLSN) < at {
		t.Fatalf("dry-run plan to %s: %+v, %v; want the commit record resolved, at or after %s", target, plan, err, at)
	}
	_, err = api.PlanRestore(ctx, apiclient.RestorePlanRequest{Target: fmt.Sprintf("xid:%d@%s", aborted, abortedAt)})
	if !errors.Is(err, apiclient.ErrPlanRefused) || !strings.Contains(err.Error(), fmt.Sprintf("transaction %d aborted", uint32(aborted))) {
		t.Fatalf("dry-run plan to the rolled-back transaction: %v; want a refusal saying it aborted", err)
	}

	// Step 4: restore to it and count.
	restored, _ := restoreAndStart(t, nil, url, target)
	got := query(t, restored, `SELECT count(*) FILTER (WHERE note LIKE 'before%') || '/' || count(*) FILTER (WHERE note = 'marker') || '/' ||
		count(*) FILTER (WHERE note LIKE 'after%' OR note = 'rolled back') || '/' || max(id) FROM ledger`)
	if want := "20/1/0/" + markerID; got != want {
		t.Fatalf("restore to %s holds %s (before/marker/after/max id); want %s", target, got, want)
	}
	t.Logf("restored to %s: commit at %s (%s)", target, plan.CommitLSN, plan.CommitTime)
}

// markedTransaction runs, on conn, one transaction that inserts a row with note, reads
// txid_current() and pg_current_wal_lsn(), and ends with end (COMMIT or ROLLBACK).
func markedTransaction(t *testing.T, conn *pgx.Conn, end, note string) (uint64, walarchive.LSN) {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO ledger (note) VALUES ($1)", note); err != nil {
		t.Fatal(err)
	}
	var xid uint64
	var at string
	if err := tx.QueryRow(ctx, "SELECT txid_current(), pg_current_wal_lsn()::text").Scan(&xid, &at); err != nil {
		t.Fatal(err)
	}
	if end == "COMMIT" {
		err = tx.Commit(ctx)
	} else {
		err = tx.Rollback(ctx)
	}
	if err != nil {
		t.Fatalf("%s: %v", end, err)
	}
	return xid, lsn(t, at)
}
