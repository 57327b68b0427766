package standby

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/walarchive"
)

// ServerState is what one probe found of the server.
type ServerState struct {
	// InRecovery is pg_is_in_recovery(): true on a standby (and on a server still
	// recovering from a backup).
	InRecovery bool
	// WALPosition is how far the server's WAL reaches: the replay position on a standby
	// (pg_last_wal_replay_lsn()), the flush position on a primary.
	WALPosition walarchive.LSN
}

// probeQuery asks for the role and the WAL position in one round trip. A standby that has
// replayed nothing yet has no replay position: 0/0.
const probeQuery = `SELECT pg_is_in_recovery(),
  coalesce(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END, '0/0')`

// Probe asks the server over conn (an ordinary SQL connection) whether it is in recovery.
func Probe(ctx context.Context, conn *pgconn.PgConn) (ServerState, error) {
	res, err := conn.Exec(ctx, probeQuery).ReadAll()
	if err != nil {
		return ServerState{}, fmt.Errorf("ask PostgreSQL pg_is_in_recovery(): %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return ServerState{}, fmt.Errorf("ask PostgreSQL pg_is_in_recovery(): expected one row, got %d results", len(res))
	}
	return ParseProbeRow(res[0].Rows[0])
}

// ParseProbeRow parses the probe's row: a boolean ('t' or 'f') and an LSN.
func ParseProbeRow(row [][]byte) (ServerState, error) {
	if len(row) != 2 {
		return ServerState{}, fmt.Errorf("pg_is_in_recovery() probe: expected 2 columns, got %d", len(row))
	}
	var st ServerState
	switch string(row[0]) {
	case "t":
		st.InRecovery = true
	case "f":
	default:
		return ServerState{}, fmt.Errorf("pg_is_in_recovery() returned %q: expected t or f", row[0])
	}
	lsn, err := walarchive.ParseLSN(string(row[1]))
	if err != nil {
		return ServerState{}, fmt.Errorf("the server's WAL position %q: %w", row[1], err)
	}
	st.WALPosition = lsn
	return st, nil
}

// ProbeReplication asks over a replication connection, for a role that may open only
// those (pg_hba.conf with a replication line and no database line): SHOW in_hot_standby
// (PostgreSQL 14 and later). The WAL position is not known this way (0).
func ProbeReplication(ctx context.Context, conn *pgconn.PgConn) (ServerState, error) {
	res, err := conn.Exec(ctx, "SHOW in_hot_standby").ReadAll()
	if err != nil {
		return ServerState{}, fmt.Errorf("ask PostgreSQL SHOW in_hot_standby: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return ServerState{}, fmt.Errorf("ask PostgreSQL SHOW in_hot_standby: expected one value")
	}
	return ParseHotStandby(string(res[0].Rows[0][0]))
}

// ParseHotStandby parses in_hot_standby: "on" on a standby, "off" on a primary.
func ParseHotStandby(v string) (ServerState, error) {
	switch v {
	case "on":
		return ServerState{InRecovery: true}, nil
	case "off":
		return ServerState{}, nil
	}
	return ServerState{}, fmt.Errorf("in_hot_standby is %q: expected on or off", v)
}
