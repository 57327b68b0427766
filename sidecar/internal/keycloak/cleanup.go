package keycloak

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// The tables the clean-up touches, as Keycloak 26 names them (its Liquibase changelogs
// jpa-changelog-26.0.0 to 26.8.0, read for this; docs/replicas.md lists what each release
// changed). Keycloak creates them unquoted, so PostgreSQL folds the names to lower case.
const (
	// TableJGroupsPing is the discovery table of Keycloak's default jdbc-ping stack,
	// created by Keycloak itself since 26.1 (JGROUPS_PING; 26.7 added two columns).
	TableJGroupsPing = "jgroups_ping"
	// TableJGroupsPingLegacy is the table of the JDBC_PING protocol that setups before 26.1
	// configured by hand (JGROUPSPING): emptied too when it exists.
	TableJGroupsPingLegacy = "jgroupsping"
	TableUserSession       = "offline_user_session"
	TableClientSession     = "offline_client_session"
	// ColumnOfflineFlag is '1' for an offline session and '0' for a persisted online one.
	ColumnOfflineFlag = "offline_flag"
	// TableRootAuthSession and TableAuthSession hold authentication sessions (logins in
	// progress) since Keycloak 26.7 persists them; auth_session rows belong to a root row
	// (ON DELETE CASCADE).
	TableRootAuthSession = "root_auth_session"
	TableAuthSession     = "auth_session"
	// TableMigrationModel records the Keycloak version the schema was migrated to.
	TableMigrationModel = "migration_model"
)

// NewestKnownMinor is the newest Keycloak 26 minor release whose schema the clean-up was
// checked against: a database migrated by a newer Keycloak may keep session state in
// tables the clean-up does not know, so removing sessions from it is refused.
const NewestKnownMinor = 8

// ErrSchemaMismatch means the database lacks a table or column the requested session
// clean-up needs, or was migrated by a Keycloak newer than the clean-up knows: it is not
// Keycloak's database, or not of the schema expected. Nothing was changed.
var ErrSchemaMismatch = apiclient.ErrSchemaMismatch

// Options say what Cleanup removes.
type Options struct {
	// Sessions is apiclient.SessionsKeep, SessionsOnline or SessionsAll.
	Sessions string
}

// Result is what Cleanup removed.
type Result struct {
	JGroupsPingRows   int64
	UserSessionRows   int64
	ClientSessionRows int64
	AuthSessionRows   int64
	// KeycloakVersion is the version in migration_model ("" without one).
	KeycloakVersion string
	// Skipped says what was not done, and why.
	Skipped []string
}

// CheckVersion decides whether sessions may be removed from a database that Keycloak
// version v (migration_model's, "" when the database has none) migrated: Keycloak 26.0 to
// 26.NewestKnownMinor and any older release are known (before 26 online sessions lived only
// in memory; the offline tables are checked anyway); a newer one, or a version that cannot
// be read, is ErrSchemaMismatch. Without a version only the tables decide.
func CheckVersion(v string) error {
	if v == "" {
		return nil
	}
	major, minor, ok := parseVersion(v)
	switch {
	case !ok:
		return fmt.Errorf("%w: %s says Keycloak version %q, which the clean-up cannot read (expected major.minor.patch)", ErrSchemaMismatch, TableMigrationModel, v)
	case major > 26 || (major == 26 && minor > NewestKnownMinor):
		return fmt.Errorf("%w: the database was migrated by Keycloak %s, newer than the schemas this kcbackup knows (up to 26.%d), which may keep session state in tables it would not clean; "+
			"use sessions keep, or a kcbackup that knows this Keycloak", ErrSchemaMismatch, v, NewestKnownMinor)
	}
	return nil
}

// parseVersion reads "26.7.0" (or "26.7.0-SNAPSHOT", "26.7") as major 26, minor 7.
func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil && major >= 0 && minor >= 0
}

// Cleanup runs the post-restore clean-up on conn, connected to the Keycloak database, in one
// transaction:
//
//  1. Look the tables up along the connection's search_path (Keycloak may use a schema of
//     its own). With sessions online or all, a missing session table or offline_flag column,
//     or a database migrated by a Keycloak newer than the clean-up knows (CheckVersion), is
//     ErrSchemaMismatch and nothing is changed: the clean-up the user asked for cannot be
//     done, and starting Keycloak on resurrected sessions is what it exists to prevent.
//  2. Empty jgroups_ping (and a legacy jgroupsping), or record that neither exists
//     (Keycloak then discovers its cluster another way, and there is nothing stale to remove).
//  3. Delete the sessions: online removes rows with offline_flag = '0' from both tables,
//     all removes every row; client sessions first, as they belong to user sessions. Both
//     also remove the persisted authentication sessions (Keycloak 26.7 and later): logins
//     in progress when the backup was taken, which no browser will finish.
func Cleanup(ctx context.Context, conn *pgconn.PgConn, o Options) (Result, error) {
	switch o.Sessions {
	case apiclient.SessionsKeep, apiclient.SessionsOnline, apiclient.SessionsAll:
	default:
		return Result{}, fmt.Errorf("invalid sessions %q: expected keep, online or all", o.Sessions)
	}
	if err := exec(ctx, conn, "BEGIN"); err != nil {
		return Result{}, err
	}
	res, err := cleanupInTx(ctx, conn, o)
	if err != nil {
		_ = exec(context.WithoutCancel(ctx), conn, "ROLLBACK")
		return Result{}, err
	}
	if err := exec(ctx, conn, "COMMIT"); err != nil {
		return Result{}, err
	}
	return res, nil
}

// schema is what step 1 found.
type schema struct {
	pings []string // discovery tables that exist
	auth  bool     // root_auth_session and auth_session exist
}

func cleanupInTx(ctx context.Context, conn *pgconn.PgConn, o Options) (Result, error) {
	var res Result
	// Step 1: what exists.
	sc, err := inspect(ctx, conn, o, &res)
	if err != nil {
		return res, err
	}
	// Step 2: stale cluster members.
	for _, t := range sc.pings {
		n, err := deleted(ctx, conn, "DELETE FROM "+t)
		if err != nil {
			return res, err
		}
		res.JGroupsPingRows += n
	}
	if len(sc.pings) == 0 {
		res.Skipped = append(res.Skipped, "table "+TableJGroupsPing+" does not exist: no discovery rows to remove")
	}
	// Step 3: sessions.
	where := ""
	switch o.Sessions {
	case apiclient.SessionsKeep:
		return res, nil
	case apiclient.SessionsOnline:
		where = " WHERE " + ColumnOfflineFlag + " = '0'"
	}
	if res.ClientSessionRows, err = deleted(ctx, conn, "DELETE FROM "+TableClientSession+where); err != nil {
		return res, err
	}
	if res.UserSessionRows, err = deleted(ctx, conn, "DELETE FROM "+TableUserSession+where); err != nil {
		return res, err
	}
	if sc.auth {
		// The tabs first, so the count is theirs and their roots'; the cascade then finds none.
		tabs, err := deleted(ctx, conn, "DELETE FROM "+TableAuthSession)
		if err != nil {
			return res, err
		}
		roots, err := deleted(ctx, conn, "DELETE FROM "+TableRootAuthSession)
		if err != nil {
			return res, err
		}
		res.AuthSessionRows = tabs + roots
	}
	return res, nil
}

// inspect is step 1 of Cleanup: it reads the Keycloak version and finds the tables,
// refusing (ErrSchemaMismatch) a session clean-up it cannot do completely.
func inspect(ctx context.Context, conn *pgconn.PgConn, o Options, res *Result) (schema, error) {
	var sc schema
	for _, t := range []string{TableJGroupsPing, TableJGroupsPingLegacy} {
		ok, err := tableExists(ctx, conn, t)
		if err != nil {
			return sc, err
		}
		if ok {
			sc.pings = append(sc.pings, t)
		}
	}
	v, err := keycloakVersion(ctx, conn)
	if err != nil {
		return sc, err
	}
	res.KeycloakVersion = v
	if o.Sessions == apiclient.SessionsKeep {
		res.Skipped = append(res.Skipped, "sessions: keep, no session removed")
		return sc, nil
	}
	if err := CheckVersion(v); err != nil {
		return sc, err
	}
	for _, t := range []string{TableUserSession, TableClientSession} {
		ok, err := columnExists(ctx, conn, t, ColumnOfflineFlag)
		if err != nil {
			return sc, err
		}
		if !ok {
			return sc, fmt.Errorf("%w: no table %s with a column %s in the search_path; "+
				"sessions %q needs it (sessions keep cleans a database without it)",
				ErrSchemaMismatch, t, ColumnOfflineFlag, o.Sessions)
		}
	}
	root, err := tableExists(ctx, conn, TableRootAuthSession)
	if err != nil {
		return sc, err
	}
	tabs, err := tableExists(ctx, conn, TableAuthSession)
	if err != nil {
		return sc, err
	}
	if root != tabs {
		return sc, fmt.Errorf("%w: of Keycloak's authentication session tables only %s exists; expected both %s and %s (Keycloak 26.7 and later) or neither",
			ErrSchemaMismatch, map[bool]string{true: TableRootAuthSession, false: TableAuthSession}[root], TableRootAuthSession, TableAuthSession)
	}
	sc.auth = root
	return sc, nil
}

// keycloakVersion reads the newest version migration_model records ("" when the table does
// not exist or is empty).
func keycloakVersion(ctx context.Context, conn *pgconn.PgConn) (string, error) {
	ok, err := tableExists(ctx, conn, TableMigrationModel)
	if err != nil || !ok {
		return "", err
	}
	order := "version DESC" // before update_time existed, versions only grew
	if ok, err := columnExists(ctx, conn, TableMigrationModel, "update_time"); err != nil {
		return "", err
	} else if ok {
		order = "update_time DESC, " + order
	}
	rows, err := query(ctx, conn, "SELECT version FROM "+TableMigrationModel+" ORDER BY "+order+" LIMIT 1")
	if err != nil || len(rows) == 0 {
		return "", err
	}
	return rows[0], nil
}

// tableExists reports whether name resolves to a table along the search_path.
func tableExists(ctx context.Context, conn *pgconn.PgConn, name string) (bool, error) {
	rows, err := query(ctx, conn, "SELECT to_regclass($1) IS NOT NULL", name)
	if err != nil {
		return false, err
	}
	return len(rows) == 1 && rows[0] == "t", nil
}

// columnExists reports whether table (along the search_path) has column.
func columnExists(ctx context.Context, conn *pgconn.PgConn, table, column string) (bool, error) {
	rows, err := query(ctx, conn,
		"SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped", table, column)
	if err != nil {
		return false, err
	}
	return len(rows) == 1 && rows[0] == "1", nil
}

// query runs a one-column query with text parameters and returns the column's values.
func query(ctx context.Context, conn *pgconn.PgConn, sql string, args ...string) ([]string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	r := conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if r.Err != nil {
		return nil, fmt.Errorf("%s: %w", sql, r.Err)
	}
	var out []string
	for _, row := range r.Rows {
		if len(row) == 1 {
			out = append(out, string(row[0]))
		}
	}
	return out, nil
}

func deleted(ctx context.Context, conn *pgconn.PgConn, sql string) (int64, error) {
	r := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if r.Err != nil {
		return 0, fmt.Errorf("%s: %w", sql, r.Err)
	}
	return r.CommandTag.RowsAffected(), nil
}

func exec(ctx context.Context, conn *pgconn.PgConn, sql string) error {
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// Connect opens a plain (not replication) connection to database with the settings of cfg.
func Connect(ctx context.Context, cfg *pgconn.Config, database string) (*pgconn.PgConn, error) {
	if database == "" {
		return nil, errors.New("no database named: expected the Keycloak database")
	}
	c := cfg.Copy()
	c.Database = database
	delete(c.RuntimeParams, "replication")
	conn, err := pgconn.ConnectConfig(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("connect to database %s: %w", strconv.Quote(database), err)
	}
	return conn, nil
}

// Serve is the sidecar's POST /v1/keycloak/cleanup: it connects to req.Database with the
// sidecar's own connection settings and runs Cleanup.
func Serve(ctx context.Context, cfg *pgconn.Config, req apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error) {
	conn, err := Connect(ctx, cfg, req.Database)
	if err != nil {
		return apiclient.KeycloakCleanupResult{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := Cleanup(ctx, conn, Options{Sessions: req.Sessions})
	if err != nil {
		return apiclient.KeycloakCleanupResult{}, fmt.Errorf("database %s: %w", strconv.Quote(req.Database), err)
	}
	return apiclient.KeycloakCleanupResult{
		Database: req.Database, Sessions: req.Sessions, JGroupsPingRows: res.JGroupsPingRows,
		UserSessionRows: res.UserSessionRows, ClientSessionRows: res.ClientSessionRows, AuthSessionRows: res.AuthSessionRows,
		KeycloakVersion: res.KeycloakVersion, Skipped: res.Skipped,
	}, nil
}
