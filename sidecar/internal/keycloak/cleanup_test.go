package keycloak_test

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/keycloak"
	"github.com/kcbackup/kcbackup/test/harness"
)

//go:embed testdata/keycloak26.sql
var keycloak26 string

// database creates a database named name on pg, runs setup in it, and returns the sidecar's
// connection settings (which name another database: Serve must switch to name).
func database(t *testing.T, pg *harness.Postgres, name, setup string) *pgconn.Config {
	t.Helper()
	ctx := context.Background()
	if err := pg.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	if setup != "" {
		conn, err := pgconn.Connect(ctx, pg.ConnString(harness.PGSuperuser, name))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, setup).ReadAll(); err != nil {
			t.Fatalf("set up %s: %v", name, err)
		}
	}
	cfg, err := pgconn.ParseConfig(pg.ConnString(harness.PGSuperuser, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// counts returns "ping/user sessions online+offline/client sessions online+offline".
func counts(t *testing.T, pg *harness.Postgres, db string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, pg.ConnString(harness.PGSuperuser, db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	q := func(sql string) string {
		r := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatalf("%s: %v", sql, r.Err)
		}
		return string(r.Rows[0][0])
	}
	return fmt.Sprintf("%s/%s+%s/%s+%s", q("SELECT count(*) FROM jgroups_ping"),
		q("SELECT count(*) FROM offline_user_session WHERE offline_flag = '0'"),
		q("SELECT count(*) FROM offline_user_session WHERE offline_flag = '1'"),
		q("SELECT count(*) FROM offline_client_session WHERE offline_flag = '0'"),
		q("SELECT count(*) FROM offline_client_session WHERE offline_flag = '1'"))
}

// TestCleanupRemovesWhatTheModeNamesOnKeycloak26Tables runs the clean-up through Serve (a
// connection to the named database with the sidecar's settings) on a real PostgreSQL
// holding Keycloak 26's tables.
func TestCleanupRemovesWhatTheModeNamesOnKeycloak26Tables(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	for _, tc := range []struct {
		sessions   string
		want       apiclient.KeycloakCleanupResult
		wantCounts string // left afterwards: ping/user online+offline/client online+offline
	}{
		{apiclient.SessionsOnline, apiclient.KeycloakCleanupResult{JGroupsPingRows: 2, UserSessionRows: 3, ClientSessionRows: 4}, "0/0+2/0+2"},
		{apiclient.SessionsAll, apiclient.KeycloakCleanupResult{JGroupsPingRows: 2, UserSessionRows: 5, ClientSessionRows: 6}, "0/0+0/0+0"},
		{apiclient.SessionsKeep, apiclient.KeycloakCleanupResult{JGroupsPingRows: 2}, "0/3+2/4+2"},
	} {
		t.Run(tc.sessions, func(t *testing.T) {
			db := "kc_" + tc.sessions
			cfg := database(t, pg, db, keycloak26)
			got, err := keycloak.Serve(context.Background(), cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: tc.sessions})
			if err != nil {
				t.Fatal(err)
			}
			if got.Database != db || got.Sessions != tc.sessions || got.JGroupsPingRows != tc.want.JGroupsPingRows ||
				got.UserSessionRows != tc.want.UserSessionRows || got.ClientSessionRows != tc.want.ClientSessionRows {
				t.Errorf("result = %+v, want rows %+v", got, tc.want)
			}
			if c := counts(t, pg, db); c != tc.wantCounts {
				t.Errorf("left in the database: %s, want %s", c, tc.wantCounts)
			}
			// Idempotent: a second run (the operator retrying) removes nothing more.
			again, err := keycloak.Serve(context.Background(), cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: tc.sessions})
			if err != nil || again.JGroupsPingRows+again.UserSessionRows+again.ClientSessionRows != 0 {
				t.Errorf("second run = %+v, %v; want nothing removed", again, err)
			}
		})
	}
}

// TestCleanupFailsClosedWithoutSessionTables: removing sessions from a database without
// Keycloak's session tables is refused and changes nothing, not even jgroups_ping.
func TestCleanupFailsClosedWithoutSessionTables(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	ctx := context.Background()
	onlyPing := "CREATE TABLE jgroups_ping (address varchar(200) PRIMARY KEY, cluster_name varchar(200) NOT NULL, ip varchar(200) NOT NULL);" +
		"INSERT INTO jgroups_ping VALUES ('a', 'ISPN', '10.0.0.1:7800');"
	noFlag := keycloak26 + "ALTER TABLE offline_client_session DROP COLUMN offline_flag CASCADE;"
	for name, setup := range map[string]string{"noschema": onlyPing, "noflag": noFlag} {
		for _, sessions := range []string{apiclient.SessionsOnline, apiclient.SessionsAll} {
			db := name + "_" + sessions
			cfg := database(t, pg, db, setup)
			_, err := keycloak.Serve(ctx, cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: sessions})
			if !errors.Is(err, apiclient.ErrSchemaMismatch) || !strings.Contains(err.Error(), "offline_") {
				t.Errorf("%s: err = %v, want ErrSchemaMismatch naming the missing table", db, err)
			}
			conn, err := pgconn.Connect(ctx, pg.ConnString(harness.PGSuperuser, db))
			if err != nil {
				t.Fatal(err)
			}
			r := conn.ExecParams(ctx, "SELECT count(*) FROM jgroups_ping", nil, nil, nil, nil).Read()
			conn.Close(ctx)
			if r.Err != nil || string(r.Rows[0][0]) == "0" {
				t.Errorf("%s: jgroups_ping emptied (%v) although the clean-up was refused", db, r.Err)
			}
		}
	}
}

// TestCleanupSkipsAbsentPingTableAndFindsTablesInKeycloakSchema: without jgroups_ping the
// clean-up records why it skipped it; tables in a schema of their own (KC_DB_SCHEMA) are
// found through the role's search_path.
func TestCleanupSkipsAbsentPingTableAndFindsTablesInKeycloakSchema(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	ctx := context.Background()
	setup := "CREATE SCHEMA kc; SET search_path = kc;" + keycloak26 + "DROP TABLE jgroups_ping;" +
		"ALTER DATABASE kcschema SET search_path = kc;"
	cfg := database(t, pg, "kcschema", setup)
	got, err := keycloak.Serve(ctx, cfg, apiclient.KeycloakCleanupRequest{Database: "kcschema", Sessions: apiclient.SessionsOnline})
	if err != nil {
		t.Fatal(err)
	}
	if got.UserSessionRows != 3 || got.ClientSessionRows != 4 || got.JGroupsPingRows != 0 {
		t.Errorf("result = %+v, want 3 user and 4 client sessions removed", got)
	}
	if !slices.ContainsFunc(got.Skipped, func(s string) bool { return strings.Contains(s, "jgroups_ping does not exist") }) {
		t.Errorf("skipped = %q, want the absent jgroups_ping recorded", got.Skipped)
	}
	if _, err := keycloak.Serve(ctx, cfg, apiclient.KeycloakCleanupRequest{Database: "nosuchdb", Sessions: apiclient.SessionsKeep}); err == nil ||
		!strings.Contains(err.Error(), "nosuchdb") {
		t.Errorf("absent database: err = %v, want an error naming it", err)
	}
}
