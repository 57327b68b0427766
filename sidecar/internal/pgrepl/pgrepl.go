// Package pgrepl holds kcbackup's calls on PostgreSQL's replication protocol that pglogrepl
// does not offer (SHOW, READ_REPLICATION_SLOT, PostgreSQL 15's BASE_BACKUP stream), and the
// connection settings shared by the daemon and the CLI. Parsers are kept apart from the
// network calls so they are tested without a server.
package pgrepl

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/walarchive"
)

// ApplicationName is how kcbackup's connections appear in pg_stat_replication; name it in
// synchronous_standby_names for synchronous archiving.
const ApplicationName = "kcbackup"

// ParseConfig builds a connection configuration from a libpq URL or key/value string, or
// from the standard libpq environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGSSLMODE, PGPASSFILE, ...) when connString is empty.
func ParseConfig(connString string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		// pgconn's parse errors may quote the string; never echo a password.
		return nil, fmt.Errorf("invalid PostgreSQL connection settings (--pg-url or PG* environment variables): %s", redact(err.Error(), connString))
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = ApplicationName
	}
	return cfg, nil
}

func redact(msg, connString string) string {
	if c, err := pgconn.ParseConfig(connString); err == nil && c.Password != "" {
		msg = strings.ReplaceAll(msg, c.Password, "REDACTED")
	}
	return msg
}

// ConnectReplication opens a physical replication connection.
func ConnectReplication(ctx context.Context, base *pgconn.Config) (*pgconn.PgConn, error) {
	cfg := base.Copy()
	cfg.RuntimeParams["replication"] = "true"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, Explain(fmt.Errorf("connect to PostgreSQL at %s:%d as %q for replication: %w", cfg.Host, cfg.Port, cfg.User, err))
	}
	return conn, nil
}

// ConnectSQL opens an ordinary connection (for locks and monitoring queries).
func ConnectSQL(ctx context.Context, base *pgconn.Config) (*pgconn.PgConn, error) {
	cfg := base.Copy()
	delete(cfg.RuntimeParams, "replication")
	if cfg.Database == "" {
		cfg.Database = "postgres"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, Explain(fmt.Errorf("connect to PostgreSQL at %s:%d as %q: %w", cfg.Host, cfg.Port, cfg.User, err))
	}
	return conn, nil
}

// Explain adds what to fix to the errors a misconfigured server or role produces.
func Explain(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == "28P01":
		return fmt.Errorf("%w (check PGPASSWORD or the password file)", err)
	case pgErr.Code == "42501" || strings.Contains(pgErr.Message, "replication role"):
		return fmt.Errorf("%w (the role needs the REPLICATION attribute: ALTER ROLE <name> REPLICATION)", err)
	case pgErr.Code == "28000" && strings.Contains(pgErr.Message, "replication"):
		return fmt.Errorf("%w (pg_hba.conf must allow a 'replication' connection for this role and host)", err)
	case pgErr.Code == "53300" || strings.Contains(pgErr.Message, "max_wal_senders"):
		return fmt.Errorf("%w (set wal_level = replica or logical and max_wal_senders > 0, then restart PostgreSQL)", err)
	}
	return err
}

// ServerInfo is what kcbackup needs to know about the server it archives.
type ServerInfo struct {
	SystemIdentifier string
	Timeline         uint32
	XLogPos          walarchive.LSN
	MajorVersion     int
	WALSegmentSize   uint64
}

// IdentifyServer runs IDENTIFY_SYSTEM and SHOW wal_segment_size on a replication connection.
func IdentifyServer(ctx context.Context, conn *pgconn.PgConn) (ServerInfo, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return ServerInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	major, err := ParseMajorVersion(conn.ParameterStatus("server_version"))
	if err != nil {
		return ServerInfo{}, err
	}
	seg, err := Show(ctx, conn, "wal_segment_size")
	if err != nil {
		return ServerInfo{}, err
	}
	segSize, err := ParseSize(seg)
	if err != nil {
		return ServerInfo{}, fmt.Errorf("wal_segment_size: %w", err)
	}
	if err := walarchive.ValidateSegmentSize(segSize); err != nil {
		return ServerInfo{}, err
	}
	return ServerInfo{
		SystemIdentifier: sys.SystemID,
		Timeline:         uint32(sys.Timeline),
		XLogPos:          walarchive.LSN(sys.XLogPos),
		MajorVersion:     major,
		WALSegmentSize:   segSize,
	}, nil
}

// Show runs the replication command SHOW name and returns the value.
func Show(ctx context.Context, conn *pgconn.PgConn, name string) (string, error) {
	res, err := conn.Exec(ctx, "SHOW "+name).ReadAll()
	if err != nil {
		return "", fmt.Errorf("SHOW %s: %w", name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected result shape", name)
	}
	return string(res[0].Rows[0][0]), nil
}

// ParseMajorVersion parses server_version ("15.18 (Debian 15.18-0+deb12u1)", "18beta1")
// into its major version and refuses versions kcbackup has no format table for.
func ParseMajorVersion(v string) (int, error) {
	n, err := walarchive.ParseServerVersion(v)
	if err != nil {
		return 0, err
	}
	if _, err := walarchive.LookupPGVersion(n); err != nil {
		return 0, fmt.Errorf("server_version %q: %w", v, err)
	}
	return n, nil
}

// ParseSize parses a PostgreSQL memory setting as SHOW prints it ("16MB", "1GB", "8kB").
func ParseSize(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseUint(num, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("invalid size %q: expected a number followed by B, kB, MB, GB or TB", s)
			}
			return n * u.mult, nil
		}
	}
	return 0, fmt.Errorf("invalid size %q: expected a number followed by B, kB, MB, GB or TB", s)
}

// ErrNotPhysicalSlot is returned when the slot name belongs to a logical slot.
var ErrNotPhysicalSlot = errors.New("the replication slot is not a physical slot")

// SlotInfo is a physical replication slot's state.
type SlotInfo struct {
	Exists     bool
	RestartLSN walarchive.LSN
	RestartTLI uint32
}

// ReadSlot runs READ_REPLICATION_SLOT (PostgreSQL 15+).
func ReadSlot(ctx context.Context, conn *pgconn.PgConn, name string) (SlotInfo, error) {
	res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+QuoteIdent(name)).ReadAll()
	if err != nil {
		return SlotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT %s: %w", name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return SlotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT %s: unexpected result shape", name)
	}
	return ParseReadSlotRow(res[0].Rows[0])
}

// ParseReadSlotRow parses READ_REPLICATION_SLOT's row: slot_type, restart_lsn, restart_tli.
func ParseReadSlotRow(row [][]byte) (SlotInfo, error) {
	if len(row) != 3 {
		return SlotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT returned %d columns, expected 3", len(row))
	}
	if row[0] == nil {
		return SlotInfo{}, nil
	}
	if string(row[0]) != "physical" {
		return SlotInfo{}, fmt.Errorf("replication slot is a %s slot; kcbackup needs a physical slot (choose another --slot name): %w", row[0], ErrNotPhysicalSlot)
	}
	info := SlotInfo{Exists: true}
	if row[1] != nil {
		lsn, err := walarchive.ParseLSN(string(row[1]))
		if err != nil {
			return SlotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT restart_lsn: %w", err)
		}
		info.RestartLSN = lsn
	}
	if row[2] != nil {
		tli, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil {
			return SlotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT restart_tli %q: %w", row[2], err)
		}
		info.RestartTLI = uint32(tli)
	}
	return info, nil
}

// CreateSlot creates a physical slot that reserves WAL immediately, so nothing written
// between its creation and the first START_REPLICATION can be removed.
func CreateSlot(ctx context.Context, conn *pgconn.PgConn, name string) error {
	_, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+QuoteIdent(name)+" PHYSICAL (RESERVE_WAL)").ReadAll()
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", name, err)
	}
	return nil
}

// ValidateSlotName checks a slot name as PostgreSQL does: 1 to 63 characters of lower-case
// letters, digits and underscores.
func ValidateSlotName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("invalid slot name %q: expected 1 to 63 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("invalid slot name %q: expected lower-case letters, digits and underscores", name)
		}
	}
	return nil
}

// QuoteIdent quotes an identifier for a replication command.
func QuoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
