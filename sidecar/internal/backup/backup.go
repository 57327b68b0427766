// Package backup takes base backups over the replication protocol and streams them,
// compressed and checksummed, straight to the archive (no local copy), and runs them for
// the HTTP API one at a time.
package backup

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// ErrRunning is returned when another base backup of the same cluster is running.
var ErrRunning = errors.New("a base backup of this cluster is already running")

// lockKey is the advisory lock that keeps two kcbackup backups of one cluster apart,
// whether they run in the sidecar or from the CLI.
const lockKey = 0x6b636261636b7570 // "kcbackup"

// DefaultZstdWorkers is the libzstd threads the server compresses a base backup with
// unless told otherwise: chosen by measurement (make bench; docs/performance.md).
const DefaultZstdWorkers = 0

// Options configure one base backup.
type Options struct {
	PG      *pgconn.Config
	Storage storage.Storage
	// Compression for a new archive (an existing archive keeps its own).
	Compression walarchive.Compression
	// Key encrypts a new archive and must match an existing encrypted one.
	Key walarchive.Key
	// FastCheckpoint starts the backup at once instead of after a spread checkpoint.
	FastCheckpoint bool
	// WaitArchived blocks until WAL up to lsn is in the archive. When nil, the archive is
	// polled for the segments (the sidecar must be archiving).
	WaitArchived func(ctx context.Context, lsn walarchive.LSN) error
	// WALTimeout bounds the wait for the backup's WAL to reach the archive.
	WALTimeout time.Duration
	// OnID is called with the backup's ID as soon as it is chosen.
	OnID func(id string)
	// Progress, when set, is called as data arrives (bytes done, estimated total). Only
	// then does the server size the tablespaces first (BASE_BACKUP's PROGRESS).
	Progress func(done, total int64)
	// ManifestSHA256 has the manifest carry SHA-256 file checksums instead of CRC32C.
	ManifestSHA256 bool
	// ClientCompression compresses in this process instead of having the server compress
	// (a zstd archive's default).
	ClientCompression bool
	// RequireServerCompression makes a server that cannot compress with zstd (built
	// without it) fail the backup. Without it, such a backup falls back, once and with a
	// log line, to compressing in this process; the record's CompressedBy says which ran.
	RequireServerCompression bool
	// ZstdWorkers is the libzstd threads the server compresses with (0: in the backend).
	ZstdWorkers int
	Logger      *slog.Logger
	Now         func() time.Time
}

// Take runs one base backup and returns its record once the backup is complete: data,
// manifest and all the WAL from its start to its stop position are in the archive, and the
// record has been written last.
func Take(ctx context.Context, o Options) (walarchive.BackupRecord, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.WALTimeout == 0 {
		o.WALTimeout = 10 * time.Minute
	}
	// Step 1: one backup at a time per cluster, across processes: a session advisory lock,
	// released by the server if this process dies.
	sqlConn, err := pgrepl.ConnectSQL(ctx, o.PG)
	if err != nil {
		return walarchive.BackupRecord{}, err
	}
	defer sqlConn.Close(context.Background())
	res, err := sqlConn.Exec(ctx, fmt.Sprintf("SELECT pg_try_advisory_lock(%d)", int64(lockKey))).ReadAll()
	if err != nil {
		return walarchive.BackupRecord{}, fmt.Errorf("take the backup lock: %w", pgrepl.Explain(err))
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "t" {
		return walarchive.BackupRecord{}, ErrRunning
	}
	// Release the lock before Take returns, not when the server notices the closed
	// connection: a backup started as soon as this one is reported done (the next
	// schedule, a user's retry) must not be refused as "already running". If the unlock
	// cannot run (the connection is gone), the server releases the lock with the session.
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sqlConn.Exec(uctx, fmt.Sprintf("SELECT pg_advisory_unlock(%d)", int64(lockKey))).ReadAll()
	}()

	// Step 2: identify the server and open its archive.
	conn, err := pgrepl.ConnectReplication(ctx, o.PG)
	if err != nil {
		return walarchive.BackupRecord{}, err
	}
	defer conn.Close(context.Background())
	info, err := pgrepl.IdentifyServer(ctx, conn)
	if err != nil {
		return walarchive.BackupRecord{}, err
	}
	archive, err := walarchive.InitArchive(ctx, o.Storage, walarchive.Identity{
		SystemIdentifier: info.SystemIdentifier, PostgresVersion: info.MajorVersion,
		WALSegmentSize: info.WALSegmentSize, Compression: o.Compression,
	}, o.Key)
	if err != nil {
		return walarchive.BackupRecord{}, err
	}
	started := o.Now().UTC()
	id, err := walarchive.NewBackupID(ctx, o.Storage, started)
	if err != nil {
		return walarchive.BackupRecord{}, err
	}
	if o.OnID != nil {
		o.OnID(id)
	}
	log := o.Logger.With("backup", id)

	// Step 3: stream BASE_BACKUP into the archive. A zstd archive has the server compress
	// (the sidecar's CPU is then spent only on checking what it stores); the objects are
	// the same either way.
	bbo := pgrepl.BaseBackupOptions{Label: "kcbackup " + id, FastCheckpoint: o.FastCheckpoint,
		Progress: o.Progress != nil, ManifestSHA256: o.ManifestSHA256}
	if archive.Identity.Compression == walarchive.CompressionZstd && !o.ClientCompression {
		bbo.ServerZstd, bbo.ServerZstdWorkers = true, o.ZstdWorkers
	}
	log.Info("base backup starting", "server_zstd", bbo.ServerZstd)
	bb, sink, err := streamBackup(ctx, conn, bbo, archive, id, o.Progress)
	if bbo.ServerZstd && pgrepl.CompressionUnsupported(err) {
		// A server built without zstd refuses the options before it starts anything.
		if o.RequireServerCompression {
			return walarchive.BackupRecord{}, fmt.Errorf("base backup %s: server-side compression was required (--compress-on server), but this PostgreSQL server was built without zstd (%w); use --compress-on client, or leave --compress-on unset to fall back to compressing in kcbackup", id, err)
		}
		log.Warn("the server cannot compress base backups with zstd (built without it); compressing in kcbackup instead", "server_error", err.Error())
		bbo.ServerZstd, bbo.ServerZstdWorkers = false, 0
		// A fresh connection: the refused command may leave the old one mid-protocol.
		conn.Close(context.Background())
		if conn, err = pgrepl.ConnectReplication(ctx, o.PG); err != nil {
			return walarchive.BackupRecord{}, fmt.Errorf("base backup %s: %w", id, err)
		}
		defer conn.Close(context.Background())
		bb, sink, err = streamBackup(ctx, conn, bbo, archive, id, o.Progress)
	}
	if err != nil {
		return walarchive.BackupRecord{}, fmt.Errorf("base backup %s: %w", id, err)
	}
	stopped := o.Now().UTC()
	log.Info("base backup data stored; waiting for its WAL", "start_lsn", bb.Start, "stop_lsn", bb.Stop, "received_bytes", sink.raw)

	// Step 4: the backup is usable only with all WAL from start to stop in the archive.
	wctx, cancel := context.WithTimeout(ctx, o.WALTimeout)
	defer cancel()
	if o.WaitArchived != nil {
		err = o.WaitArchived(wctx, bb.Stop)
	}
	if err == nil {
		// Exact keys decide, whatever the streamer believes.
		err = archive.WaitForWAL(wctx, bb.Timeline, bb.Start, bb.Stop)
	}
	if err != nil {
		return walarchive.BackupRecord{}, fmt.Errorf("base backup %s: its WAL (%s to %s) did not reach the archive; is the kcbackup sidecar archiving? %w", id, bb.Start, bb.Stop, err)
	}

	// Step 5: the record, written last, makes the backup exist.
	rec := walarchive.BackupRecord{
		FormatVersion: walarchive.FormatVersion, ID: id, Label: "kcbackup " + id,
		SystemIdentifier: info.SystemIdentifier, PostgresVersion: info.MajorVersion,
		Timeline: bb.Timeline, StartLSN: bb.Start, StopLSN: bb.Stop,
		StartTime: started, StopTime: stopped, Objects: sink.objects,
		CompressedBy: compressedBy(archive.Identity.Compression, bbo.ServerZstd),
	}
	if err := archive.PutJSON(ctx, walarchive.BackupRecordKey(id), rec); err != nil {
		return walarchive.BackupRecord{}, fmt.Errorf("base backup %s: write its record: %w", id, err)
	}
	log.Info("base backup complete", "data_bytes", rec.DataBytes(), "stored_bytes", rec.StoredBytes(), "duration", stopped.Sub(started).Round(time.Millisecond))
	return rec, nil
}

// streamBackup runs BASE_BACKUP on conn into the archive under backup id's prefix. On an
// error, what it stored is removed.
func streamBackup(ctx context.Context, conn *pgconn.PgConn, bbo pgrepl.BaseBackupOptions, archive *walarchive.Archive, id string, progress func(done, total int64)) (pgrepl.BaseBackupResult, *archiveSink, error) {
	sink := &archiveSink{ctx: ctx, archive: archive, prefix: walarchive.BackupPrefix(id), progress: progress, serverZstd: bbo.ServerZstd}
	bb, err := pgrepl.BaseBackup(ctx, conn, bbo, sink)
	if cerr := sink.closeCurrent(); err == nil {
		err = cerr
	}
	if err != nil {
		sink.abort()
		return bb, nil, err
	}
	return bb, sink, nil
}

// compressedBy is what a backup record's CompressedBy says: who compressed its data.
func compressedBy(c walarchive.Compression, serverZstd bool) string {
	switch {
	case c != walarchive.CompressionZstd:
		return walarchive.CompressedByNone
	case serverZstd:
		return walarchive.CompressedByServer
	default:
		return walarchive.CompressedByClient
	}
}

// archiveSink streams each archive of the backup into its own object through a pipe, so
// memory stays bounded whatever the database's size.
type archiveSink struct {
	ctx        context.Context
	archive    *walarchive.Archive
	prefix     string
	progress   func(done, total int64)
	serverZstd bool // the archives arrive compressed, named "<name>.zst"
	total      int64
	raw        uint64 // bytes received (compressed, when the server compresses)

	cur     *walarchive.PipeWriter
	curObj  walarchive.BackupObject
	curDone chan putOutcome
	objects []walarchive.BackupObject
	stored  []string
}

type putOutcome struct {
	res walarchive.PutResult
	err error
}

func (s *archiveSink) Started(start walarchive.LSN, tli uint32, tbs []pgrepl.Tablespace) error {
	for _, t := range tbs {
		if t.Size > 0 {
			s.total += t.Size * 1024
		}
	}
	return nil
}

func (s *archiveSink) NewArchive(name, location string) error {
	if s.serverZstd {
		tar, ok := strings.CutSuffix(name, ".zst")
		if !ok {
			return fmt.Errorf("the server sent archive %q uncompressed; zstd compression was asked for", name)
		}
		return s.open(walarchive.BackupObject{Name: tar, Location: location}, true)
	}
	return s.open(walarchive.BackupObject{Name: name, Location: location}, false)
}

func (s *archiveSink) Manifest() error {
	return s.open(walarchive.BackupObject{Name: "backup_manifest"}, false)
}

// open starts the object obj; precompressed says its bytes arrive zstd-compressed.
func (s *archiveSink) open(obj walarchive.BackupObject, precompressed bool) error {
	if err := s.closeCurrent(); err != nil {
		return err
	}
	for _, o := range s.objects {
		if o.Name == obj.Name {
			return fmt.Errorf("the server sent archive %q twice", obj.Name)
		}
	}
	pr, pw := walarchive.Pipe(4 << 20)
	s.cur, s.curObj, s.curDone = pw, obj, make(chan putOutcome, 1)
	key := s.prefix + obj.Name
	s.stored = append(s.stored, key)
	put := s.archive.Put
	if precompressed {
		put = s.archive.PutPrecompressed
	}
	go func(done chan putOutcome) {
		res, err := put(s.ctx, key, pr)
		pr.CloseWithError(errors.New("upload ended"))
		done <- putOutcome{res, err}
	}(s.curDone)
	return nil
}

func (s *archiveSink) Data(p []byte) error {
	if s.cur == nil {
		return errors.New("the server sent data before naming an archive")
	}
	if _, err := s.cur.Write(p); err != nil {
		return fmt.Errorf("store %s: %w", s.curObj.Name, err)
	}
	s.raw += uint64(len(p))
	return nil
}

func (s *archiveSink) Progress(done int64) {
	if s.progress != nil {
		s.progress(done, s.total)
	}
}

func (s *archiveSink) closeCurrent() error {
	if s.cur == nil {
		return nil
	}
	s.cur.Close()
	out := <-s.curDone
	s.cur = nil
	if out.err != nil {
		return fmt.Errorf("store %s: %w", s.curObj.Name, out.err)
	}
	s.curObj.RawBytes, s.curObj.StoredBytes = out.res.RawBytes, out.res.StoredBytes
	s.curObj.SHA256 = hex.EncodeToString(out.res.SHA256[:])
	s.objects = append(s.objects, s.curObj)
	return nil
}

// abort removes what a failed backup stored. Without a record it is not a backup anyway;
// this only frees the space.
func (s *archiveSink) abort() {
	if s.cur != nil {
		s.cur.CloseWithError(errors.New("backup aborted"))
		<-s.curDone
		s.cur = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, k := range s.stored {
		_ = s.archive.Storage.Delete(ctx, k)
	}
}
