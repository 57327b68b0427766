package controller

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/test/harness"
)

// TestDrillMarkerOnRealPostgreSQL runs the drill's marker transaction on a real server: it
// counts what exists, takes a transaction ID only when it counted something, and gives up
// on a table a running write holds, rather than wait behind it.
func TestDrillMarkerOnRealPostgreSQL(t *testing.T) {
	ctx := context.Background()
	pg := harness.StartPostgres(t, harness.PGOptions{})
	if err := pg.Exec(ctx, "CREATE TABLE realm (id int PRIMARY KEY); INSERT INTO realm SELECT generate_series(1, 7)"); err != nil {
		t.Fatal(err)
	}
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, pg.ConnString(harness.PGSuperuser, "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(ctx) })
		return c
	}
	conn := connect()

	// Nothing to count: refused, and no transaction ID was spent on a marker.
	m, err := markSource(ctx, conn, []string{"user_entity", "public.nope"})
	if !errors.Is(err, errNothingToCount) || m.xid != "" {
		t.Fatalf("marker over missing tables: %+v, %v; want errNothingToCount and no xid", m, err)
	}

	// Counted: the tables that exist, the others listed, a committed transaction ID.
	m, err = markSource(ctx, conn, []string{"realm", "user_entity"})
	if err != nil || len(m.counts) != 1 || m.counts[0].Source != 7 || len(m.skipped) != 1 || m.xid == "" {
		t.Fatalf("marker: %+v, %v; want realm counted 7, user_entity skipped, an xid", m, err)
	}
	var status string
	if err := conn.QueryRow(ctx, "SELECT txid_status($1::bigint)", m.xid).Scan(&status); err != nil || status != "committed" {
		t.Fatalf("the marker transaction %s is %q (%v), want committed", m.xid, status, err)
	}
	if m.startLSN == "" || m.endLSN == "" || m.startLSN == m.endLSN {
		t.Errorf("marker LSNs %s .. %s: the end must lie past the start (the commit record)", m.startLSN, m.endLSN)
	}

	// The timeline a promoted instance reports (instanceState): the WAL being written's.
	var tli int64
	if err := conn.QueryRow(ctx, timelineQuery).Scan(&tli); err != nil || tli != 1 {
		t.Errorf("timeline of a fresh server: %d (%v), want 1", tli, err)
	}

	// A running write holds the table: the marker gives up after lock_timeout.
	writer := connect()
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "INSERT INTO realm VALUES (100)"); err != nil {
		t.Fatal(err)
	}
	_, err = markSource(ctx, conn, []string{"realm"})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55P03" {
		t.Fatalf("marker behind a running write: %v; want lock_not_available (55P03)", err)
	}
}
