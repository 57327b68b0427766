package keycloak_test

import (
	"context"
	_ "embed"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/keycloak"
	"github.com/kcbackup/kcbackup/test/harness"
)

//go:embed testdata/keycloak26_7.sql
var keycloak26dot7 string

// The versions whose schemas the clean-up knows, and the ones it refuses.
func TestCheckVersionKnowsKeycloak26UpToTheNewestMinor(t *testing.T) {
	for _, c := range []struct {
		version string
		ok      bool
	}{
		{"", true}, // no migration_model: the tables decide
		{"26.0.0", true},
		{"26.1.4", true},
		{"26.7.0", true},
		{"26.8.0", true},
		{"25.0.6", true},
		{"26.9.0", false},
		{"27.0.0", false},
		{"999.0.0-SNAPSHOT", false},
		{"twenty-six", false},
		{"26", false},
	} {
		err := keycloak.CheckVersion(c.version)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, apiclient.ErrSchemaMismatch)) {
			t.Errorf("CheckVersion(%q) = %v; want ok %v (else ErrSchemaMismatch)", c.version, err, c.ok)
		}
	}
}

// Keycloak 26.7 persists logins in progress: online and all remove them with the sessions,
// keep leaves them. A legacy jgroupsping table is emptied with jgroups_ping.
func TestCleanupOfKeycloak267RemovesAuthSessionsAndLegacyPingRows(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	for _, tc := range []struct {
		sessions string
		auth     int64
		left     string // root_auth_session/auth_session/jgroupsping rows left
	}{
		{apiclient.SessionsOnline, 5, "0/0/0"},
		{apiclient.SessionsAll, 5, "0/0/0"},
		{apiclient.SessionsKeep, 0, "2/3/0"},
	} {
		t.Run(tc.sessions, func(t *testing.T) {
			db := "kc267_" + tc.sessions
			cfg := database(t, pg, db, keycloak26+keycloak26dot7)
			got, err := keycloak.Serve(context.Background(), cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: tc.sessions})
			if err != nil {
				t.Fatal(err)
			}
			if got.JGroupsPingRows != 3 || got.AuthSessionRows != tc.auth || got.KeycloakVersion != "26.7.0" {
				t.Errorf("result = %+v; want 3 ping rows (2 + 1 legacy), %d auth session rows, version 26.7.0", got, tc.auth)
			}
			if left := rowsLeft(t, pg, db, "root_auth_session", "auth_session", "jgroupsping"); left != tc.left {
				t.Errorf("left root_auth_session/auth_session/jgroupsping = %s; want %s", left, tc.left)
			}
		})
	}
}

// A database a newer Keycloak migrated may keep sessions where the clean-up does not look:
// removing sessions is refused and nothing changes; keep still empties the ping table.
func TestCleanupRefusesSessionsOfANewerKeycloak(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{})
	ctx := context.Background()
	for _, v := range []string{"26.9.0", "27.0.0"} {
		db := "kc" + strings.ReplaceAll(v, ".", "")
		cfg := database(t, pg, db, keycloak26+keycloak26dot7+"INSERT INTO migration_model VALUES ('m-3', '"+v+"', 300);")
		for _, sessions := range []string{apiclient.SessionsOnline, apiclient.SessionsAll} {
			_, err := keycloak.Serve(ctx, cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: sessions})
			if !errors.Is(err, apiclient.ErrSchemaMismatch) || !strings.Contains(err.Error(), v) || !strings.Contains(err.Error(), "sessions keep") {
				t.Errorf("%s, sessions %s: err = %v; want ErrSchemaMismatch naming the version and sessions keep", v, sessions, err)
			}
			if left := rowsLeft(t, pg, db, "jgroups_ping", "offline_user_session", "auth_session"); left != "2/5/3" {
				t.Errorf("%s, sessions %s: left %s rows; want 2/5/3, nothing changed", v, sessions, left)
			}
		}
		got, err := keycloak.Serve(ctx, cfg, apiclient.KeycloakCleanupRequest{Database: db, Sessions: apiclient.SessionsKeep})
		if err != nil || got.JGroupsPingRows != 3 || got.KeycloakVersion != v {
			t.Errorf("%s, sessions keep: %+v, %v; want the ping rows removed", v, got, err)
		}
	}
}

// rowsLeft counts the rows of tables in db, joined by "/".
func rowsLeft(t *testing.T, pg *harness.Postgres, db string, tables ...string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, pg.ConnString(harness.PGSuperuser, db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var out []string
	for _, table := range tables {
		r := conn.ExecParams(ctx, "SELECT count(*) FROM "+table, nil, nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatalf("count %s: %v", table, r.Err)
		}
		out = append(out, string(r.Rows[0][0]))
	}
	return strings.Join(out, "/")
}
