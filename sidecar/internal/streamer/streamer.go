package streamer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Config configures a Streamer.
type Config struct {
	// PG is the connection configuration (replication is added when connecting).
	PG *pgconn.Config
	// Slot is the physical replication slot's name.
	Slot string
	// PartialInterval is how often, at most, the tail of the current segment is uploaded
	// while WAL arrives. Zero uploads the tail as soon as WAL arrives (synchronous mode).
	PartialInterval time.Duration
	// StatusInterval is how often a status update is sent to the server when nothing else
	// prompts one.
	StatusInterval time.Duration
	// SpoolDir holds received WAL until it is uploaded. It is emptied at start.
	SpoolDir string
	// SpoolMaxBytes bounds the spool; past it, receiving pauses (the slot keeps the WAL on
	// the server) until uploads catch up.
	SpoolMaxBytes int64
	// DrainTimeout bounds the final uploads at shutdown.
	DrainTimeout time.Duration
	// Storage is the archive's storage.
	Storage storage.Storage
	// Compression is used when the archive is created; an existing archive keeps its own.
	Compression walarchive.Compression
	// Key, when set, encrypts the archive (chosen when it is created; must match after).
	Key walarchive.Key
	// PGDataDir, when set, is the data directory whose volume usage is reported.
	PGDataDir string
	Logger    *slog.Logger
	Metrics   *metrics.Metrics
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// WriterTTL is how long this sidecar's claim on the archive holds after each renewal
	// (walarchive.DefaultWriterTTL when zero); it is renewed every sixth of it.
	WriterTTL time.Duration
	// Host names this sidecar in the archive's writer claims (the pod name; the host name
	// when empty).
	Host string
	// StorageName names the archive in messages (a storage URL without secrets).
	StorageName string
}

// Validate checks the configuration and fills defaults.
func (c *Config) Validate() error {
	if c.PG == nil {
		return errors.New("no PostgreSQL connection settings")
	}
	if err := pgrepl.ValidateSlotName(c.Slot); err != nil {
		return fmt.Errorf("--slot: %w", err)
	}
	if c.PartialInterval < 0 || c.PartialInterval > time.Hour {
		return fmt.Errorf("invalid --partial-interval %s: expected 0 (synchronous) up to 1h", c.PartialInterval)
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.StatusInterval < 100*time.Millisecond || c.StatusInterval > 5*time.Minute {
		return fmt.Errorf("invalid status interval %s: expected 100ms to 5m", c.StatusInterval)
	}
	if c.SpoolDir == "" || !filepath.IsAbs(c.SpoolDir) {
		return fmt.Errorf("invalid --spool %q: expected an absolute directory path", c.SpoolDir)
	}
	if c.SpoolMaxBytes == 0 {
		c.SpoolMaxBytes = 1 << 30
	}
	if c.SpoolMaxBytes < 2*walarchive.MaxSegmentSize/64 {
		return fmt.Errorf("invalid spool limit %d: expected at least 32 MiB", c.SpoolMaxBytes)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 20 * time.Second
	}
	if c.Storage == nil {
		return errors.New("no storage")
	}
	if c.Compression == "" {
		c.Compression = walarchive.CompressionZstd
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.WriterTTL == 0 {
		c.WriterTTL = walarchive.DefaultWriterTTL
	}
	if c.WriterTTL < time.Second || c.WriterTTL > time.Hour {
		return fmt.Errorf("invalid writer lease TTL %s: expected 1s to 1h", c.WriterTTL)
	}
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	return nil
}

// Status is a snapshot of the streamer's state.
type Status struct {
	SystemIdentifier  string
	Timeline          uint32
	ServerFlushLSN    walarchive.LSN
	ReceivedLSN       walarchive.LSN
	ArchivedLSN       walarchive.LSN
	ArchiveLagBytes   int64
	ArchiveLagSeconds float64
	Streaming         bool
	StorageUp         bool
	LastError         string
}

// permanentError stops Run: retrying cannot help until the configuration changes.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Streamer archives WAL continuously. Create with New, then call Run.
type Streamer struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics

	mu          sync.Mutex
	archive     *walarchive.Archive
	segSize     uint64
	sysID       string
	timeline    uint32
	serverFlush walarchive.LSN
	received    walarchive.LSN
	// ack is the acknowledgement room: what is archived, and what may be reported.
	ack       *ackTracker
	streaming bool
	storageUp bool
	lastErr   string
	// spool is the hand-off from the receiver to the uploader; tail is what the uploader
	// knows of the stored tails.
	spool *spool
	tail  *tailState
	// parts are the tail parts in flight.
	parts partPipe
	// slotRestart is the slot's restart_lsn as last read over SQL (0: not known).
	slotRestart walarchive.LSN
	// writerID is this sidecar's identity in the archive's writer claims; writerEpoch is
	// the claim it holds (0: none, nothing is uploaded); cancelSession ends the current
	// session when the sidecar is fenced.
	writerID      string
	writerEpoch   uint64
	cancelSession context.CancelFunc
	fencedBy      error
	// conditional is what the probe found of the store's conditional writes.
	conditional walarchive.ConditionalWrites
	// fencedSpool is set when fenced: the spool's leftovers are dropped at the next claim.
	fencedSpool bool

	wake       chan struct{} // new work for the uploader
	archiveSet chan struct{} // closed once the archive is opened
	setOnce    sync.Once
}

// New returns a streamer for a validated configuration.
func New(cfg Config) (*Streamer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Streamer{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics,
		storageUp:  true,
		spool:      &spool{dir: cfg.SpoolDir},
		tail:       newTailState(),
		wake:       make(chan struct{}, 1),
		ack:        newAckTracker(cfg.Now),
		archiveSet: make(chan struct{}),
	}, nil
}

// Status returns the current state.
func (s *Streamer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		SystemIdentifier: s.sysID, Timeline: s.timeline, ServerFlushLSN: s.serverFlush,
		ReceivedLSN: s.received, ArchivedLSN: s.ack.archivedLSN(), Streaming: s.streaming,
		StorageUp: s.storageUp, LastError: s.lastErr,
	}
	if s.serverFlush > st.ArchivedLSN {
		st.ArchiveLagBytes = int64(s.serverFlush - st.ArchivedLSN)
	}
	st.ArchiveLagSeconds = s.ack.lagSeconds()
	return st
}

// Archive returns the opened archive, once known (nil before the first connection).
func (s *Streamer) Archive() *walarchive.Archive {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.archive
}

// WaitArchived blocks until WAL up to lsn is durable in the archive, or ctx ends.
func (s *Streamer) WaitArchived(ctx context.Context, lsn walarchive.LSN) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if s.ack.archivedLSN() >= lsn {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for WAL up to %s to be archived: %w", lsn, ctx.Err())
		case <-t.C:
		}
	}
}

// Run streams and archives until ctx is cancelled, reconnecting with backoff after errors.
// On cancellation it stops receiving, uploads what it has (complete segments and the
// partial tail), sends the final flush position and returns nil. It returns an error only
// for problems retrying cannot fix (another cluster's archive, a bad slot).
func (s *Streamer) Run(ctx context.Context) error {
	if err := prepareSpool(s.cfg.SpoolDir); err != nil {
		return err
	}
	id, err := loadWriterID(s.cfg.SpoolDir)
	if err != nil {
		return fmt.Errorf("spool directory %s: %w", s.cfg.SpoolDir, err)
	}
	s.writerID = id
	claimCtx, stopClaim := context.WithCancel(context.Background())
	claimDone := make(chan struct{})
	go func() {
		defer close(claimDone)
		s.keepClaim(claimCtx)
	}()
	defer func() {
		stopClaim()
		<-claimDone
		s.releaseClaim()
	}()
	upCtx, cancelUp := context.WithCancel(context.Background())
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		s.uploader(upCtx)
	}()
	defer func() {
		cancelUp()
		<-upDone
	}()
	go s.sampleVolume(ctx)
	go s.sampleServer(ctx)

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 500 * time.Millisecond
	bo.MaxInterval = 30 * time.Second
	for {
		started := time.Now()
		err := s.session(ctx)
		s.setStreaming(false)
		if ctx.Err() != nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			s.setErr(err)
			return perm.err
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		if errors.Is(err, walarchive.ErrNotWriter) || errors.Is(err, walarchive.ErrFenced) {
			// What decides a claim changes on the writer TTL's time scale (a lease lapses,
			// a restored server promotes): look again at least that often.
			wait = min(wait, s.cfg.WriterTTL)
		}
		if errors.Is(err, walarchive.ErrAwaitingPromotion) {
			wait = min(wait, time.Second) // the restored server takes the archive as it promotes
		}
		s.setErr(err)
		s.log.Error("streaming stopped; reconnecting", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// prepareSpool creates the spool directory, checks it is writable and empties it.
func prepareSpool(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("spool directory %s: %w", dir, err)
	}
	probe := filepath.Join(dir, ".probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return fmt.Errorf("spool directory %s is not writable: %w", dir, err)
	}
	os.Remove(probe)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("spool directory %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.Name() == writerIDFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("empty spool directory %s: %w", dir, err)
		}
	}
	return nil
}

// session is one connection's life: identify, open the archive, find where to start,
// then stream timeline after timeline.
func (s *Streamer) session(parent context.Context) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	s.mu.Lock()
	s.cancelSession, s.fencedBy = cancel, nil
	s.mu.Unlock()
	err := s.sessionSteps(ctx)
	s.mu.Lock()
	fenced := s.fencedBy
	s.mu.Unlock()
	if parent.Err() == nil && fenced != nil {
		return fenced
	}
	return err
}

func (s *Streamer) sessionSteps(ctx context.Context) error {
	// Step 1: connect and identify the server.
	conn, err := pgrepl.ConnectReplication(ctx, s.cfg.PG)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	defer s.keepReceivedTail()
	info, err := pgrepl.IdentifyServer(ctx, conn)
	if err != nil {
		return pgrepl.Explain(err)
	}

	// Step 2: open (or create) the archive; another cluster's archive is refused.
	archive, err := walarchive.InitArchive(ctx, s.cfg.Storage, walarchive.Identity{
		SystemIdentifier: info.SystemIdentifier, PostgresVersion: info.MajorVersion,
		WALSegmentSize: info.WALSegmentSize, Compression: s.cfg.Compression,
	}, s.cfg.Key)
	if err != nil {
		// Another cluster's archive, a wrong key or a corrupt identity: retrying cannot help.
		if errors.Is(err, walarchive.ErrIdentityMismatch) || errors.Is(err, walarchive.ErrWrongKey) || errors.Is(err, walarchive.ErrCorrupt) {
			return permanentError{fmt.Errorf("open archive: %w", err)}
		}
		return fmt.Errorf("open archive: %w", err)
	}
	if archive.UpgradedFrom != 0 {
		s.log.Info("archive moved to the current format: the live tail is now stored as appended parts; kcbackup releases before this format refuse the archive", "from_format", archive.UpgradedFrom, "to_format", walarchive.FormatVersion)
	}
	s.mu.Lock()
	s.archive, s.segSize, s.sysID = archive, info.WALSegmentSize, info.SystemIdentifier
	// Receiving pauses past the spool limit; with less than two segments' room the
	// current segment could never finish and the pause never end.
	limit := s.cfg.SpoolMaxBytes
	if min := int64(2 * info.WALSegmentSize); limit < min {
		s.log.Warn("spool limit below two WAL segments; using two segments", "limit_bytes", limit, "segment_bytes", info.WALSegmentSize)
		limit = min
	}
	s.spool.setLimit(limit)
	s.mu.Unlock()
	s.setOnce.Do(func() { close(s.archiveSet) })

	// Step 2b: this sidecar must be the archive's one writer (docs/reliability.md 30), and know
	// whether the store honours conditional writes before it stores anything immutable.
	// The store is probed once per process, not on every reconnect.
	s.mu.Lock()
	known := s.conditional
	s.mu.Unlock()
	if known == walarchive.ConditionalUnknown {
		c, err := archive.ProbeConditionalWrites(ctx)
		if err != nil {
			return err
		}
		if c == walarchive.ConditionalIgnored {
			s.log.Warn("the archive's store ignores conditional writes (If-None-Match): each immutable object is checked before it is written; two writers racing between the check and the write could still both write, which the writer claim prevents")
		}
		s.mu.Lock()
		s.conditional = c
		s.mu.Unlock()
	}
	archive.Conditional = s.conditional
	srv, err := serverPath(ctx, conn, info)
	if err != nil {
		return err
	}
	// Step 3: the slot holds every byte not yet archived. A server restored in place is
	// handed the archive only once it promotes; its slot is created now, while it is still
	// in recovery, so that it reserves WAL from before the promotion (created after it, it
	// would reserve from the end-of-recovery checkpoint on, leaving the new timeline's first
	// WAL unprotected). Any other server claims first: a refused copy gets no slot that
	// would hold its WAL.
	st, err := archive.WriterState(ctx)
	if err != nil {
		return err
	}
	var slot pgrepl.SlotInfo
	early := st.Claim != nil && st.Claim.Kind == walarchive.ClaimHandover
	if early {
		if slot, err = s.ensureSlot(ctx, conn); err != nil {
			return err
		}
	}
	if err := s.claimArchive(ctx, archive, st, srv); err != nil {
		return err
	}
	if !early {
		if slot, err = s.ensureSlot(ctx, conn); err != nil {
			return err
		}
	}

	// Step 4: choose where to start.
	tli, start, err := s.startPosition(ctx, conn, info, slot)
	if err != nil {
		return err
	}
	// The acknowledged position starts over with each session, from where it streams: the
	// server may be another history than before (restored in place, a new slot), and only
	// what this session stores is known to match it.
	s.ack.startSession(start, slot.RestartLSN)

	// Step 5: stream timeline after timeline.
	for {
		if err := s.archiveHistory(ctx, conn, tli); err != nil {
			return err
		}
		err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
			Timeline: int32(tli), Mode: pglogrepl.PhysicalReplication,
		})
		if err != nil {
			return fmt.Errorf("START_REPLICATION at %s on timeline %d: %w", start, tli, err)
		}
		s.log.Info("streaming", "timeline", tli, "start", start, "slot", s.cfg.Slot)
		s.mu.Lock()
		s.timeline, s.streaming, s.lastErr = tli, true, ""
		s.mu.Unlock()
		s.m.Timeline.Set(float64(tli))
		s.m.Up.Set(1)
		s.listPartials(ctx, tli)
		next, nextStart, err := s.stream(ctx, conn, tli, start)
		if err != nil {
			return err
		}
		s.log.Info("timeline ended; following the next one", "timeline", tli, "next_timeline", next, "switch_point", nextStart)
		tli, start = next, nextStart.SegmentStart(s.segSize)
	}
}

// ensureSlot reads the replication slot, creating it (reserving WAL) when missing and
// recreating it when the server invalidated it: the slot holds every byte not yet archived.
func (s *Streamer) ensureSlot(ctx context.Context, conn *pgconn.PgConn) (pgrepl.SlotInfo, error) {
	slot, err := pgrepl.ReadSlot(ctx, conn, s.cfg.Slot)
	if errors.Is(err, pgrepl.ErrNotPhysicalSlot) {
		return pgrepl.SlotInfo{}, permanentError{err}
	}
	if err != nil {
		return pgrepl.SlotInfo{}, err
	}
	lost, reason := false, ""
	if slot.Exists {
		lost, reason = s.slotInvalidation(ctx)
	}
	if slot.Exists && (slot.RestartLSN == 0 || lost) {
		// The server invalidated the slot (max_slot_wal_keep_size, or PostgreSQL 18's
		// idle_replication_slot_timeout, which leaves restart_lsn set): the WAL it held is
		// gone. Recreate it; the archive has a gap until the next base backup.
		s.noteGap()
		s.log.Error("the replication slot was invalidated by the server; WAL was lost before it was archived (the archive now has a hole); recreating the slot; take a new base backup",
			"slot", s.cfg.Slot, "reason", reason,
			"hint", "raise max_slot_wal_keep_size or idle_replication_slot_timeout (PostgreSQL 18), or keep the sidecar running")
		if _, err := conn.Exec(ctx, "DROP_REPLICATION_SLOT "+pgrepl.QuoteIdent(s.cfg.Slot)).ReadAll(); err != nil {
			return pgrepl.SlotInfo{}, fmt.Errorf("drop invalidated slot %s: %w", s.cfg.Slot, err)
		}
		slot.Exists = false
	}
	if !slot.Exists {
		if err := pgrepl.CreateSlot(ctx, conn, s.cfg.Slot); err != nil {
			return pgrepl.SlotInfo{}, err
		}
		if slot, err = pgrepl.ReadSlot(ctx, conn, s.cfg.Slot); err != nil {
			return pgrepl.SlotInfo{}, err
		}
		s.log.Info("created replication slot", "slot", s.cfg.Slot, "restart_lsn", slot.RestartLSN)
	}
	return slot, nil
}

// startPosition returns the timeline and segment-aligned LSN to stream from: the segment
// holding the slot's restart_lsn, or earlier when the archive ends before it and the server
// still has that WAL (the gap is then filled).
//
// When the restart point lies on an ancestor of the server's timeline (a slot created just
// after an in-place restore or a promotion reserves WAL from the restored backup's redo
// point), the ancestors' WAL up to where the server's path leaves them is usually archived
// already: recovery read it from this archive. Streaming it again would ask the server for
// segments it never had (an ancestor's files past the restore's switch point, or a history
// whose switch points go back), so the session starts on the first timeline of the path
// whose WAL the archive lacks.
func (s *Streamer) startPosition(ctx context.Context, conn *pgconn.PgConn, info pgrepl.ServerInfo, slot pgrepl.SlotInfo) (uint32, walarchive.LSN, error) {
	tli := slot.RestartTLI
	if tli == 0 {
		tli = info.Timeline
	}
	start := slot.RestartLSN.SegmentStart(s.segSize)
	if tli != info.Timeline && info.Timeline > 1 {
		var err error
		if tli, start, err = s.pathStart(ctx, conn, info.Timeline, slot.RestartLSN); err != nil {
			return 0, 0, err
		}
		if tli != info.Timeline {
			return tli, start, nil
		}
	}
	want, ok, err := s.archiveNeeds(ctx, tli)
	if err != nil {
		return 0, 0, err
	}
	if !ok {
		// A fresh archive: begin with the oldest WAL the server still has, not at the slot's
		// restart point, so commits before it (waiting in synchronous mode) are archived too.
		if oldest := s.oldestOnServer(ctx, conn, tli, start); oldest < start {
			s.log.Info("new archive: archiving from the oldest WAL the server still has", "timeline", tli, "from", oldest, "slot_restart", slot.RestartLSN)
			return tli, oldest, nil
		}
		s.log.Info("new archive: archiving from the slot's restart point; earlier WAL is not on the server", "timeline", tli, "from", start)
		return tli, start, nil
	}
	if want < start {
		if s.serverHas(ctx, conn, tli, want) {
			s.log.Info("filling the archive from before the slot's position", "timeline", tli, "from", want, "slot_restart", start)
			return tli, want, nil
		}
		s.noteGap()
		s.log.Error("the archive has a gap: the server no longer has the WAL the archive needs; take a new base backup",
			"timeline", tli, "archive_end", want, "streaming_from", start)
	}
	return tli, start, nil
}

// pathStart walks the server's path (timeline cur and its history) from restart, an LSN on
// an ancestor, and returns the first place whose WAL the archive lacks: the first missing
// complete segment of an ancestor, when the server still has it, or else the segment where
// cur began. An ancestor's segment holding its switch point is not needed: the next
// timeline's file begins with the same bytes. A missing segment the server no longer has
// is a hole, reported as such.
func (s *Streamer) pathStart(ctx context.Context, conn *pgconn.PgConn, cur uint32, restart walarchive.LSN) (uint32, walarchive.LSN, error) {
	res, err := pglogrepl.TimelineHistory(ctx, conn, int32(cur))
	if err != nil {
		return 0, 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", cur, err)
	}
	h, err := walarchive.ParseTimelineHistory(res.Content)
	if err != nil {
		return 0, 0, fmt.Errorf("timeline %d history from the server: %w", cur, err)
	}
	for _, p := range h.Path() {
		if p.End <= restart || p.Begin >= p.End {
			continue
		}
		from := max(p.Begin, restart).SegmentNo(s.segSize)
		upto := p.End.SegmentNo(s.segSize) // exclusive: that segment is read from the next timeline
		have, err := s.completeSegments(ctx, p.Timeline)
		if err != nil {
			return 0, 0, err
		}
		for seg := from; seg < upto; seg++ {
			if have[seg] {
				continue
			}
			lsn := walarchive.SegmentStartLSN(seg, s.segSize)
			if s.serverHas(ctx, conn, p.Timeline, lsn) {
				s.log.Info("archiving an ancestor timeline's WAL the archive lacks", "timeline", p.Timeline, "from", lsn, "server_timeline", cur)
				return p.Timeline, lsn, nil
			}
			s.noteGap()
			s.log.Error("the archive has a gap on an ancestor timeline the server no longer has; take a new base backup",
				"timeline", p.Timeline, "missing", lsn, "server_timeline", cur)
			break
		}
	}
	begin := walarchive.LSN(0)
	if len(h) > 0 {
		begin = h[len(h)-1].SwitchPoint
	}
	start := max(begin, restart).SegmentStart(s.segSize)
	s.log.Info("the slot's restart point lies on an ancestor timeline whose WAL is archived; streaming the server's timeline", "timeline", cur, "from", start, "slot_restart", restart)
	return cur, start, nil
}

// completeSegments returns the numbers of the complete segments archived on timeline tli.
func (s *Streamer) completeSegments(ctx context.Context, tli uint32) (map[uint64]bool, error) {
	have, _, err := s.listTimeline(ctx, tli)
	return have, err
}

// listTimeline lists timeline tli's archived WAL once: the numbers of its complete
// segments, and the segment after its last partial (0 with none).
func (s *Streamer) listTimeline(ctx context.Context, tli uint32) (complete map[uint64]bool, noPartialFrom uint64, err error) {
	objs, err := s.cfg.Storage.List(ctx, walarchive.TimelineDir(tli))
	if err != nil {
		return nil, 0, fmt.Errorf("list archived WAL of timeline %d: %w", tli, err)
	}
	complete = make(map[uint64]bool, len(objs))
	for _, o := range objs {
		f, err := walarchive.ParseWALKey(o.Key, s.segSize)
		switch {
		case err != nil:
		case f.Kind == walarchive.WALFileSegment:
			complete[f.SegNo] = true
		case f.Kind == walarchive.WALFilePartial || f.Kind == walarchive.WALFilePart:
			noPartialFrom = max(noPartialFrom, f.SegNo+1)
		}
	}
	return complete, noPartialFrom, nil
}

// oldestOnServer returns the start of the oldest segment of timeline tli, at or before
// start, that the server can still stream (it keeps a contiguous run of segments, so a
// binary search over segment numbers finds it).
func (s *Streamer) oldestOnServer(ctx context.Context, conn *pgconn.PgConn, tli uint32, start walarchive.LSN) walarchive.LSN {
	lo, hi := uint64(1), start.SegmentNo(s.segSize) // hi is known to be there
	for lo < hi {
		mid := lo + (hi-lo)/2
		if s.serverHas(ctx, conn, tli, walarchive.SegmentStartLSN(mid, s.segSize)) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return walarchive.SegmentStartLSN(hi, s.segSize)
}

// slotInvalidation asks the server, over SQL, whether the slot was invalidated
// (wal_status 'lost') and why (PostgreSQL 17 and later name it: wal_removed, idle_timeout,
// ...). A failed query reports not lost: READ_REPLICATION_SLOT's empty restart_lsn still
// catches invalidation by max_slot_wal_keep_size.
func (s *Streamer) slotInvalidation(ctx context.Context) (lost bool, reason string) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgrepl.ConnectSQL(qctx, s.cfg.PG)
	if err != nil {
		return false, "unknown"
	}
	defer conn.Close(context.Background())
	q := "SELECT coalesce(wal_status, ''), coalesce(to_jsonb(s)->>'invalidation_reason', '') FROM pg_replication_slots s WHERE slot_name = '" + s.cfg.Slot + "'" // slot names are [a-z0-9_]
	res, err := conn.Exec(qctx, q).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return false, "unknown"
	}
	status, why := string(res[0].Rows[0][0]), string(res[0].Rows[0][1])
	if why == "" {
		why = "wal_status " + status
	}
	return status == "lost", why
}

// archiveNeeds returns the first LSN the archive lacks on timeline tli: after its last
// complete segment, or, with nothing archived on tli, where tli began (from its history).
func (s *Streamer) archiveNeeds(ctx context.Context, tli uint32) (walarchive.LSN, bool, error) {
	have, err := s.completeSegments(ctx, tli)
	if err != nil {
		return 0, false, err
	}
	if len(have) > 0 {
		last := uint64(0)
		for seg := range have {
			last = max(last, seg)
		}
		return walarchive.SegmentStartLSN(last+1, s.segSize), true, nil
	}
	if tli == 1 {
		return 0, false, nil
	}
	h, err := s.archive.History(ctx, tli)
	if err != nil || len(h) == 0 {
		return 0, false, nil // the history is archived in session step 5
	}
	return h[len(h)-1].SwitchPoint.SegmentStart(s.segSize), true, nil
}

// serverHas reports whether the server can stream from lsn on tli (its WAL file exists).
// It probes with a short-lived START_REPLICATION without the slot. The walsender answers
// CopyBothResponse before it opens any WAL file: a removed segment shows only as the
// ErrorResponse that follows, so the probe waits for the first WAL data or that error.
func (s *Streamer) serverHas(ctx context.Context, conn *pgconn.PgConn, tli uint32, lsn walarchive.LSN) bool {
	probeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sql := fmt.Sprintf("START_REPLICATION PHYSICAL %s TIMELINE %d", lsn, tli)
	conn.Frontend().SendQuery(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		return false
	}
	copying := false
	for {
		msg, err := conn.ReceiveMessage(probeCtx)
		if err != nil {
			return false
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			copying = true
		case *pgproto3.CopyData:
			if !copying || len(m.Data) == 0 || m.Data[0] != pglogrepl.XLogDataByteID {
				continue // a keepalive: no WAL read yet
			}
			_, err := pglogrepl.SendStandbyCopyDone(probeCtx, conn) // reads up to ReadyForQuery
			return err == nil
		case *pgproto3.ErrorResponse:
			drainToReady(probeCtx, conn)
			return false
		case *pgproto3.ReadyForQuery:
			return false
		}
	}
}

// drainToReady consumes messages up to ReadyForQuery so the connection stays usable.
func drainToReady(ctx context.Context, conn *pgconn.PgConn) {
	for {
		m, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return
		}
		if _, done := m.(*pgproto3.ReadyForQuery); done {
			return
		}
	}
}

// archiveHistory archives timeline tli's history file before any of its WAL, retrying
// storage errors until it lands.
func (s *Streamer) archiveHistory(ctx context.Context, conn *pgconn.PgConn, tli uint32) error {
	if tli <= 1 {
		return nil
	}
	res, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
	}
	if _, err := walarchive.ParseTimelineHistory(res.Content); err != nil {
		return fmt.Errorf("timeline %d history from the server: %w", tli, err)
	}
	return s.retryStorage(ctx, metrics.KindHistory, func() error {
		err := s.archive.PutHistory(ctx, tli, res.Content)
		if errors.Is(err, walarchive.ErrConflict) {
			return backoff.Permanent(permanentError{fmt.Errorf("archive timeline %d history: %w: another history for this timeline is archived; was another cluster restored into this archive?", tli, err)})
		}
		return err
	})
}

// listPartials records in noPartialFrom the segment after the last partial stored on
// timeline tli. A failed listing records nothing: each segment's first partial then reads
// the stored one, as it would without the listing.
func (s *Streamer) listPartials(ctx context.Context, tli uint32) {
	_, from, err := s.listTimeline(ctx, tli)
	s.tail.listed(tli, from, err == nil)
}

// storedTailLength returns where the stored run of a segment's tail ends (0 with none),
// from a listing of its parts: their ranges are in their names, so nothing is read, and a
// sidecar that holds only the recipients of an encrypted archive continues the run too.
// A format-2 partial (one object) is read for its length.
func (s *Streamer) storedTailLength(ctx context.Context, tli uint32, segno uint64) (uint64, error) {
	t, err := s.archive.ListTail(ctx, tli, segno)
	switch {
	case errors.Is(err, walarchive.ErrWrongKey):
		// A format-2 partial this sidecar cannot read with the recipient-only key: it
		// cannot know how long it is, so it never writes a shorter run beside it; the
		// segment is stored when complete, which supersedes it. Until then this segment's
		// tail is not uploaded, nor acknowledged.
		s.log.Warn("cannot read the stored format-2 partial with the recipient-only key; its segment is archived when complete", "segment", walarchive.SegmentName(tli, segno, s.segSize))
		return s.segSize, nil
	case errors.Is(err, walarchive.ErrCorrupt):
		s.log.Warn("stored format-2 partial fails verification; the tail is stored again as parts", "segment", walarchive.SegmentName(tli, segno, s.segSize), "err", err)
		return 0, nil
	case err != nil:
		return 0, err
	}
	if t.Complete {
		return s.segSize, nil
	}
	_, end := t.Run()
	return end, nil
}

// retryStorage retries op with backoff while the storage fails, keeping storage_up at 0.
func (s *Streamer) retryStorage(ctx context.Context, kind string, op func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := op()
		s.noteStorage(kind, err)
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0))
	return err
}

func (s *Streamer) noteStorage(kind string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.storageUp {
			s.log.Warn("archive storage failing; retrying", "kind", kind, "err", err)
		}
		s.storageUp = false
		s.m.StorageUp.Set(0)
		s.m.UploadErrors.WithLabelValues(kind).Inc()
		return
	}
	if !s.storageUp {
		s.log.Info("archive storage is back")
	}
	s.storageUp = true
	s.m.StorageUp.Set(1)
}

// noteGap counts WAL lost before it was archived: the archive has a hole from here.
func (s *Streamer) noteGap() {
	s.m.ArchiveGaps.Inc()
	s.m.ArchiveGapLast.Set(float64(s.cfg.Now().Unix()))
}

func (s *Streamer) setStreaming(v bool) {
	s.mu.Lock()
	s.streaming = v
	s.mu.Unlock()
	if !v {
		s.m.Up.Set(0)
	}
}

func (s *Streamer) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}

// sampleServer reads, every 5 seconds over an ordinary SQL connection, the server's WAL end
// and the slot's restart_lsn. The replication stream alone cannot say how much WAL the slot
// holds once receiving pauses (spool full during a long outage), which is exactly when the
// disk may fill. Failures only mean the figures come from the stream instead.
func (s *Streamer) sampleServer(ctx context.Context) {
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	q := "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_flush_lsn() END, " +
		"(SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '" + s.cfg.Slot + "')" // slot names are [a-z0-9_]
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil || conn.IsClosed() {
			c, err := pgrepl.ConnectSQL(ctx, s.cfg.PG)
			if err != nil {
				continue
			}
			conn = c
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := conn.Exec(qctx, q).ReadAll()
		cancel()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		row := res[0].Rows[0]
		end, err1 := walarchive.ParseLSN(string(row[0]))
		restart, err2 := walarchive.ParseLSN(string(row[1]))
		if err1 != nil || err2 != nil {
			continue
		}
		s.mu.Lock()
		if end > s.serverFlush {
			s.serverFlush = end
		}
		s.slotRestart = restart
		s.mu.Unlock()
	}
}

// sampleVolume reports the data directory's volume usage every 15 seconds.
func (s *Streamer) sampleVolume(ctx context.Context) {
	if s.cfg.PGDataDir == "" {
		return
	}
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(s.cfg.PGDataDir, &st); err == nil {
			s.m.PGDataVolumeFree.Set(float64(st.Bavail) * float64(st.Bsize))
			s.m.PGDataVolumeSize.Set(float64(st.Blocks) * float64(st.Bsize))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
