package pgrepl

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kcbackup/kcbackup/walarchive"
)

// BaseBackupOptions are the BASE_BACKUP options kcbackup uses (PostgreSQL 15 syntax).
type BaseBackupOptions struct {
	Label string
	// FastCheckpoint requests an immediate checkpoint instead of a spread one.
	FastCheckpoint bool
	// MaxRateKB throttles the server (kB/s); 0 is unlimited.
	MaxRateKB int
	// Progress asks for progress messages. The server then sizes every tablespace first,
	// a second scan of the data directory, so it is asked for only when someone watches.
	Progress bool
	// ManifestSHA256 asks for SHA-256 file checksums in the manifest instead of CRC32C,
	// which the server computes several times faster and pg_verifybackup checks alike.
	ManifestSHA256 bool
	// ServerZstd has the server compress each archive with zstd at level 1 (PostgreSQL
	// 15+), with ServerZstdWorkers libzstd threads (0: in the backend process itself). The
	// archives then arrive named "<name>.zst", each one zstd frame; the manifest does not.
	ServerZstd        bool
	ServerZstdWorkers int
}

// CompressionUnsupported reports whether err is the server refusing BASE_BACKUP's
// COMPRESSION because it was built without that method: "invalid compression
// specification: this build does not support compression with ZSTD" (SQLSTATE 42601, raised
// while the options are parsed, before the backup starts; PostgreSQL's common/compression.c).
// The method's name is not translated, so the check holds whatever lc_messages is.
func CompressionUnsupported(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
		return false
	}
	return strings.Contains(strings.ToUpper(pgErr.Message), "ZSTD")
}

// Command renders the BASE_BACKUP command. WAL is not included (the archive has it) and
// the server does not wait for archive_command (kcbackup checks its own archive).
func (o BaseBackupOptions) Command() string {
	checksums := "CRC32C"
	if o.ManifestSHA256 {
		checksums = "SHA256"
	}
	parts := []string{
		"LABEL '" + strings.ReplaceAll(o.Label, "'", "''") + "'",
		"WAIT false",
		"MANIFEST 'yes'",
		"MANIFEST_CHECKSUMS '" + checksums + "'",
		"TABLESPACE_MAP",
	}
	if o.Progress {
		parts = append(parts, "PROGRESS")
	}
	if o.ServerZstd {
		detail := "level=1"
		if o.ServerZstdWorkers > 0 {
			detail += fmt.Sprintf(",workers=%d", o.ServerZstdWorkers)
		}
		parts = append(parts, "COMPRESSION 'zstd'", "COMPRESSION_DETAIL '"+detail+"'")
	}
	if o.FastCheckpoint {
		parts = append(parts, "CHECKPOINT 'fast'")
	}
	if o.MaxRateKB > 0 {
		parts = append(parts, fmt.Sprintf("MAX_RATE %d", o.MaxRateKB))
	}
	return "BASE_BACKUP (" + strings.Join(parts, ", ") + ")"
}

// Tablespace is one entry of BASE_BACKUP's tablespace list.
type Tablespace struct {
	OID      string // empty for the main data directory
	Location string
	Size     int64 // kB, estimated; -1 when unknown
}

// BackupSink receives a base backup's stream. Archives arrive one after another
// (NewArchive, Data..., then the next); the manifest comes last.
type BackupSink interface {
	// Started reports the start position and the tablespaces (the data directory last).
	Started(start walarchive.LSN, tli uint32, tablespaces []Tablespace) error
	// NewArchive starts an archive ("base.tar" or "<oid>.tar").
	NewArchive(name, location string) error
	// Manifest starts the backup manifest.
	Manifest() error
	// Data is a chunk of the current archive or manifest; valid only during the call.
	Data(p []byte) error
	// Progress reports the bytes the server has sent.
	Progress(done int64)
}

// BaseBackupResult is the end of a base backup.
type BaseBackupResult struct {
	Start, Stop walarchive.LSN
	Timeline    uint32
}

// BaseBackup runs BASE_BACKUP on a replication connection and streams its output to sink,
// following PostgreSQL 15's protocol (one COPY stream of 'n' new-archive, 'd' data, 'm'
// manifest and 'p' progress messages; see "Streaming Replication Protocol", BASE_BACKUP).
func BaseBackup(ctx context.Context, conn *pgconn.PgConn, opts BaseBackupOptions, sink BackupSink) (BaseBackupResult, error) {
	var res BaseBackupResult
	conn.Frontend().SendQuery(&pgproto3.Query{String: opts.Command()})
	if err := conn.Frontend().Flush(); err != nil {
		return res, fmt.Errorf("send BASE_BACKUP: %w", err)
	}
	// Step 1: the start position, then the tablespace list.
	row, err := readSingleRow(ctx, conn, 2)
	if err != nil {
		return res, fmt.Errorf("BASE_BACKUP start position: %w", err)
	}
	if res.Start, res.Timeline, err = parsePosRow(row); err != nil {
		return res, fmt.Errorf("BASE_BACKUP start position: %w", err)
	}
	tbs, err := readTablespaces(ctx, conn)
	if err != nil {
		return res, err
	}
	if err := sink.Started(res.Start, res.Timeline, tbs); err != nil {
		return res, err
	}
	// Step 2: the COPY stream.
	if err := expectCopyOut(ctx, conn); err != nil {
		return res, err
	}
	for done := false; !done; {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return res, fmt.Errorf("receive base backup: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := dispatchBackupMessage(m.Data, sink); err != nil {
				return res, err
			}
		case *pgproto3.CopyDone:
			done = true
		case *pgproto3.ErrorResponse:
			return res, Explain(pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse:
		default:
			return res, fmt.Errorf("base backup: unexpected %T in the COPY stream", msg)
		}
	}
	// Step 3: the end position, then CommandComplete and ReadyForQuery.
	row, err = readSingleRow(ctx, conn, 2)
	if err != nil {
		return res, fmt.Errorf("BASE_BACKUP end position: %w", err)
	}
	if res.Stop, _, err = parsePosRow(row); err != nil {
		return res, fmt.Errorf("BASE_BACKUP end position: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return res, fmt.Errorf("finish base backup: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return res, nil
		case *pgproto3.ErrorResponse:
			return res, pgconn.ErrorResponseToPgError(m)
		}
	}
}

// dispatchBackupMessage decodes one CopyData payload of the BASE_BACKUP stream.
func dispatchBackupMessage(data []byte, sink BackupSink) error {
	if len(data) == 0 {
		return errors.New("base backup: empty COPY message")
	}
	body := data[1:]
	switch data[0] {
	case 'n':
		name, rest, ok := cutCString(body)
		if !ok {
			return errors.New("base backup: malformed new-archive message")
		}
		loc, _, ok := cutCString(rest)
		if !ok {
			return errors.New("base backup: malformed new-archive message")
		}
		if name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return fmt.Errorf("base backup: server sent an unsafe archive name %q", name)
		}
		return sink.NewArchive(name, loc)
	case 'm':
		return sink.Manifest()
	case 'd':
		return sink.Data(body)
	case 'p':
		if len(body) != 8 {
			return errors.New("base backup: malformed progress message")
		}
		sink.Progress(int64(binary.BigEndian.Uint64(body)))
		return nil
	}
	return fmt.Errorf("base backup: unknown COPY message type %q", data[0])
}

func cutCString(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

func readSingleRow(ctx context.Context, conn *pgconn.PgConn, cols int) ([][]byte, error) {
	var row [][]byte
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			if len(m.Fields) != cols {
				return nil, fmt.Errorf("expected %d columns, got %d", cols, len(m.Fields))
			}
		case *pgproto3.DataRow:
			row = make([][]byte, len(m.Values))
			for i, v := range m.Values {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
		case *pgproto3.CommandComplete:
			if row == nil {
				return nil, errors.New("no row")
			}
			return row, nil
		case *pgproto3.ErrorResponse:
			return nil, Explain(pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse:
		default:
			return nil, fmt.Errorf("unexpected %T", msg)
		}
	}
}

func parsePosRow(row [][]byte) (walarchive.LSN, uint32, error) {
	if len(row) != 2 {
		return 0, 0, fmt.Errorf("expected 2 columns, got %d", len(row))
	}
	lsn, err := walarchive.ParseLSN(string(row[0]))
	if err != nil {
		return 0, 0, err
	}
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil || tli == 0 {
		return 0, 0, fmt.Errorf("invalid timeline %q", row[1])
	}
	return lsn, uint32(tli), nil
}

func readTablespaces(ctx context.Context, conn *pgconn.PgConn) ([]Tablespace, error) {
	var tbs []Tablespace
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("BASE_BACKUP tablespaces: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			if len(m.Fields) != 3 {
				return nil, fmt.Errorf("BASE_BACKUP tablespaces: expected 3 columns, got %d", len(m.Fields))
			}
		case *pgproto3.DataRow:
			t := Tablespace{Size: -1}
			if len(m.Values) != 3 {
				return nil, errors.New("BASE_BACKUP tablespaces: malformed row")
			}
			t.OID, t.Location = string(m.Values[0]), string(m.Values[1])
			if m.Values[2] != nil {
				if n, err := strconv.ParseInt(string(m.Values[2]), 10, 64); err == nil {
					t.Size = n
				}
			}
			tbs = append(tbs, t)
		case *pgproto3.CommandComplete:
			return tbs, nil
		case *pgproto3.ErrorResponse:
			return nil, Explain(pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse:
		default:
			return nil, fmt.Errorf("BASE_BACKUP tablespaces: unexpected %T", msg)
		}
	}
}

func expectCopyOut(ctx context.Context, conn *pgconn.PgConn) error {
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("base backup: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyOutResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return Explain(pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse:
		default:
			return fmt.Errorf("base backup: expected the COPY stream, got %T", msg)
		}
	}
}
