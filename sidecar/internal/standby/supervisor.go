package standby

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/sidecar/internal/streamer"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Config configures a Supervisor.
type Config struct {
	// PG is the connection configuration of this pod's PostgreSQL.
	PG *pgconn.Config
	// Slot is the physical slot the streamer uses; on a standby the Supervisor keeps a slot
	// of the same name, so the promoted server's streamer finds it.
	Slot    string
	Storage storage.Storage
	Key     walarchive.Key
	// WriterTTL is the streamer's writer lease TTL: a primary unreachable for longer has its
	// streamer stopped, which releases the archive to a promoted standby.
	WriterTTL time.Duration
	// ProbeInterval is how often pg_is_in_recovery() is asked (default 1s).
	ProbeInterval time.Duration
	// SlotInterval is how often a standby's slot is advanced to the archive's end
	// (default 30s).
	SlotInterval time.Duration
	// NewStreamer builds the archiver run while the server is the primary (a fresh one for
	// each time it becomes the primary).
	NewStreamer func() (*streamer.Streamer, error)
	Metrics     *metrics.Metrics
	Logger      *slog.Logger
	Now         func() time.Time
}

func (c *Config) defaults() error {
	if c.PG == nil || c.NewStreamer == nil || c.Storage == nil {
		return errors.New("standby supervisor: PostgreSQL settings, storage and a streamer constructor are required")
	}
	if err := pgrepl.ValidateSlotName(c.Slot); err != nil {
		return fmt.Errorf("--slot: %w", err)
	}
	if c.WriterTTL == 0 {
		c.WriterTTL = walarchive.DefaultWriterTTL
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = time.Second
	}
	if c.SlotInterval == 0 {
		c.SlotInterval = 30 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Phase is what the sidecar does: it follows the server's role.
type Phase string

const (
	// PhaseUnknown: the server has not answered yet; nothing runs.
	PhaseUnknown Phase = apiclient.RoleUnknown
	// PhaseStandby: the server is a standby; the sidecar keeps its slot, archives nothing.
	PhaseStandby Phase = apiclient.RoleStandby
	// PhasePrimary: the server is the primary; the streamer archives.
	PhasePrimary Phase = apiclient.RolePrimary
)

// Next decides the phase after a probe: the server's answer decides, when there is one. A
// primary that does not answer keeps its streamer (which rides out a restart of the
// server) for one writer TTL; after that the streamer is stopped, releasing the archive's
// claim, so that a standby promoted in its place need not wait for a sidecar that may
// live on beside a dead server. A standby that does not answer stays a standby.
func Next(cur Phase, answered bool, inRecovery bool, silentFor, ttl time.Duration) Phase {
	switch {
	case answered && inRecovery:
		return PhaseStandby
	case answered:
		return PhasePrimary
	case cur == PhasePrimary && silentFor >= ttl:
		return PhaseUnknown
	}
	return cur
}

// Supervisor runs the streamer while the server is the primary and keeps the standby's
// slot while it is a standby. It also answers, for the API, what the sidecar is doing.
type Supervisor struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics

	roleGauge *prometheus.GaugeVec

	mu       sync.Mutex
	phase    Phase
	cur      *streamer.Streamer // the running streamer (primary), nil otherwise
	readOnly *walarchive.Archive
	server   ServerState
	slot     SlotState
	archived walarchive.LSN
	lastErr  error
	slotErr  error
}

// New returns a supervisor; it registers kcbackup_server_role on cfg.Metrics' registry.
func New(cfg Config) (*Supervisor, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kcbackup_server_role",
		Help: "1 for the role the sidecar found its PostgreSQL in (primary: it archives; standby: it stands by; unknown: no answer yet), 0 for the others.",
	}, []string{"role"})
	if err := cfg.Metrics.Registry.Register(g); err != nil {
		return nil, fmt.Errorf("register kcbackup_server_role: %w", err)
	}
	s := &Supervisor{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, roleGauge: g}
	s.setPhase(PhaseUnknown)
	return s, nil
}

func (s *Supervisor) setPhase(p Phase) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
	for _, r := range []Phase{PhasePrimary, PhaseStandby, PhaseUnknown} {
		v := 0.0
		if r == p {
			v = 1
		}
		s.roleGauge.WithLabelValues(string(r)).Set(v)
	}
}

// Phase returns what the sidecar is doing.
func (s *Supervisor) Phase() Phase {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phase
}

// Run follows the server's role until ctx ends: it probes the server every
// ProbeInterval, starts the streamer when the server is (or becomes) the primary, stops it
// (draining and releasing the archive's claim) when the server is demoted or silent for a
// writer TTL, and keeps the slot while the server is a standby. It returns the streamer's
// error when the streamer gives up (another cluster's archive, a bad slot).
func (s *Supervisor) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	var (
		c          conns
		run        *primaryRun
		silentFrom time.Time
		nextSlot   time.Time
	)
	defer c.close()
	for {
		// Step 1: ask the server.
		state, err := s.probe(ctx, &c)
		now := s.cfg.Now()
		if err == nil {
			silentFrom = time.Time{}
		} else if silentFrom.IsZero() {
			silentFrom = now
		}
		cur := s.Phase()
		next := Next(cur, err == nil, state.InRecovery, now.Sub(silentFrom), s.cfg.WriterTTL)
		s.note(state, err)

		// Step 2: follow a change of role.
		if next != cur {
			s.log.Info("the server's role changed", "from", cur, "to", next, "err", err)
			if run != nil {
				if err := run.stop(); err != nil {
					return err
				}
				run = nil
				s.setCurrent(nil)
			}
			s.setPhase(next)
			switch next {
			case PhasePrimary:
				if run, err = s.startPrimary(ctx); err != nil {
					return err
				}
			case PhaseStandby:
				nextSlot = time.Time{}
			}
		}

		// Step 3: on a standby, keep the WAL a promotion will need.
		if next == PhaseStandby && err == nil && !now.Before(nextSlot) {
			if c.sql == nil {
				s.setSlotErr(errors.New("the standby's slot is kept over an ordinary SQL connection, which PostgreSQL refused the sidecar's role " +
					"(only replication connections work): allow the role a database connection in pg_hba.conf"))
			} else {
				s.keepSlot(ctx, c.sql, state)
			}
			nextSlot = now.Add(s.cfg.SlotInterval)
		}

		var done <-chan error
		if run != nil {
			done = run.done
		}
		select {
		case <-ctx.Done():
			if run != nil {
				return run.stop()
			}
			return nil
		case err := <-done:
			if err != nil {
				return err // the streamer gave up for good: the sidecar cannot go on
			}
			run = nil // it stopped by itself: the next probe decides afresh
			s.setCurrent(nil)
			s.setPhase(PhaseUnknown)
		case <-t.C:
		}
	}
}

// conns are the connections the probe keeps open: an ordinary one, and a replication one
// used only while the ordinary one is refused.
type conns struct {
	sql, repl *pgconn.PgConn
}

func (c *conns) close() {
	for _, p := range []**pgconn.PgConn{&c.sql, &c.repl} {
		if *p != nil {
			(*p).Close(context.Background())
			*p = nil
		}
	}
}

// probe asks the server over a kept ordinary connection, reconnecting when it broke. When
// the role may not open one (only a replication line in pg_hba.conf), it asks over a
// replication connection instead: the primary then archives as before, but a standby's
// slot, kept over SQL, cannot be (Ready says so).
func (s *Supervisor) probe(ctx context.Context, c *conns) (ServerState, error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := keptProbe(pctx, &c.sql, func(ctx context.Context) (*pgconn.PgConn, error) { return pgrepl.ConnectSQL(ctx, s.cfg.PG) }, Probe)
	if err == nil {
		if c.repl != nil {
			c.repl.Close(context.Background())
			c.repl = nil
		}
		return st, nil
	}
	if rst, rerr := keptProbe(pctx, &c.repl, func(ctx context.Context) (*pgconn.PgConn, error) { return pgrepl.ConnectReplication(ctx, s.cfg.PG) }, ProbeReplication); rerr == nil {
		return rst, nil
	}
	return ServerState{}, err
}

// keptProbe runs ask over *conn, connecting first when there is none and dropping the
// connection when the question failed.
func keptProbe(ctx context.Context, conn **pgconn.PgConn, connect func(context.Context) (*pgconn.PgConn, error), ask func(context.Context, *pgconn.PgConn) (ServerState, error)) (ServerState, error) {
	if *conn == nil || (*conn).IsClosed() {
		c, err := connect(ctx)
		if err != nil {
			return ServerState{}, err
		}
		*conn = c
	}
	st, err := ask(ctx, *conn)
	if err != nil {
		(*conn).Close(context.Background())
		*conn = nil
	}
	return st, err
}

func (s *Supervisor) note(st ServerState, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err == nil {
		s.server = st
	}
}

// keepSlot advances the standby's slot to the archive's end (step 3 of Run).
func (s *Supervisor) keepSlot(ctx context.Context, conn *pgconn.PgConn, state ServerState) {
	kctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	end, archived, err := s.archivedEnd(kctx)
	if err != nil {
		s.m.StorageUp.Set(0)
		s.setSlotErr(fmt.Errorf("read where the archive ends: %w", err))
		s.log.Warn("could not read where the archive ends; the standby's slot is not advanced", "err", err)
		return
	}
	s.m.StorageUp.Set(1)
	slot, lost, err := KeepSlot(kctx, conn, s.cfg.Slot, end, archived)
	if lost {
		s.m.ArchiveGaps.Inc()
		s.log.Error("the standby's replication slot was invalidated by the server; WAL after the archive's end may be gone, so a promotion now would leave a hole until the next base backup; recreated it",
			"slot", s.cfg.Slot, "hint", "raise max_slot_wal_keep_size on the standby")
	}
	if err != nil {
		s.setSlotErr(err)
		s.log.Error("could not keep the standby's replication slot", "slot", s.cfg.Slot, "err", err)
		return
	}
	if state.WALPosition > slot.RestartLSN && slot.RestartLSN > 0 {
		s.m.SlotRetainedBytes.Set(float64(state.WALPosition - slot.RestartLSN))
	}
	if archived {
		s.m.ArchivedLSN.Set(float64(end))
	}
	s.mu.Lock()
	s.slot, s.archived, s.slotErr = slot, end, nil
	s.mu.Unlock()
	s.log.Debug("standing by: kept the standby's slot at the archive's end", "slot", s.cfg.Slot, "restart_lsn", slot.RestartLSN, "archive_end", end, "replay", state.WALPosition)
}

func (s *Supervisor) setSlotErr(err error) {
	s.mu.Lock()
	s.slotErr = err
	s.mu.Unlock()
}

// archivedEnd reads the archive's end, opening the archive read-only on first use
// (false, no error, while the archive does not exist yet).
func (s *Supervisor) archivedEnd(ctx context.Context) (walarchive.LSN, bool, error) {
	s.mu.Lock()
	a := s.readOnly
	s.mu.Unlock()
	if a == nil {
		var err error
		a, err = walarchive.OpenArchive(ctx, s.cfg.Storage, s.cfg.Key)
		if errors.Is(err, walarchive.ErrNoIdentity) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		s.mu.Lock()
		s.readOnly = a
		s.mu.Unlock()
	}
	return ArchivedEnd(ctx, a)
}

// primaryRun is one run of the streamer.
type primaryRun struct {
	cancel context.CancelFunc
	done   chan error
}

// stop ends the run: the streamer drains, releases its claim and returns.
func (r *primaryRun) stop() error {
	r.cancel()
	return <-r.done
}

func (s *Supervisor) startPrimary(ctx context.Context) (*primaryRun, error) {
	st, err := s.cfg.NewStreamer()
	if err != nil {
		return nil, err
	}
	s.setCurrent(st)
	rctx, cancel := context.WithCancel(ctx)
	r := &primaryRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- st.Run(rctx) }()
	s.log.Info("the server is the primary: archiving")
	return r, nil
}

func (s *Supervisor) setCurrent(st *streamer.Streamer) {
	s.mu.Lock()
	s.cur = st
	s.mu.Unlock()
}

func (s *Supervisor) current() *streamer.Streamer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Config returns the configuration with its defaults filled.
func (s *Supervisor) Config() Config { return s.cfg }
