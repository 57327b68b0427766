package keycloak

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// The tables the clean-up touches, as Keycloak 26 names them.
const (
	TableJGroupsPing   = "jgroups_ping"
	TableUserSession   = "offline_user_session"
	TableClientSession = "offline_client_session"
	// ColumnOfflineFlag is '1' for an offline session and '0' for a persisted online one.
	ColumnOfflineFlag = "offline_flag"
)

// ErrSchemaMismatch means the database lacks a table or column the requested session
// clean-up needs: it is not Keycloak's database, or not of the schema expected. Nothing was
// changed.
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
	// Skipped says what was not done, and why.
	Skipped []string
}

// Cleanup runs the post-restore clean-up on conn, connected to the Keycloak database, in one
// transaction:
//
//  1. Look the tables up along the connection's search_path (Keycloak may use a schema of
//     its own). With sessions online or all, a missing session table or offline_flag column
//     is ErrSchemaMismatch and nothing is changed: the clean-up the user asked for cannot be
//     done, and starting Keycloak on resurrected sessions is what it exists to prevent.
//  2. Empty jgroups_ping, or record that it does not exist (Keycloak then discovers its
//     cluster another way, and there is nothing stale to remove).
//  3. Delete the sessions: online removes rows with offline_flag = '0' from both tables,
//     all removes every row; client sessions first, as they belong to user sessions.
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

func cleanupInTx(ctx context.Context, conn *pgconn.PgConn, o Options) (Result, error) {
	var res Result
	// Step 1: what exists.
	ping, err := tableExists(ctx, conn, TableJGroupsPing)
	if err != nil {
		return res, err
	}
	if o.Sessions != apiclient.SessionsKeep {
		for _, t := range []string{TableUserSession, TableClientSession} {
			ok, err := columnExists(ctx, conn, t, ColumnOfflineFlag)
			if err != nil {
				return res, err
			}
			if !ok {
				return res, fmt.Errorf("%w: no table %s with a column %s in the search_path; "+
					"sessions %q needs it (sessions keep cleans a database without it)",
					ErrSchemaMismatch, t, ColumnOfflineFlag, o.Sessions)
			}
		}
	} else {
		res.Skipped = append(res.Skipped, "sessions: keep, no session removed")
	}
	// Step 2: stale cluster members.
	if ping {
		if res.JGroupsPingRows, err = deleted(ctx, conn, "DELETE FROM "+TableJGroupsPing); err != nil {
			return res, err
		}
	} else {
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
	return res, nil
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
		UserSessionRows: res.UserSessionRows, ClientSessionRows: res.ClientSessionRows, Skipped: res.Skipped,
	}, nil
}
