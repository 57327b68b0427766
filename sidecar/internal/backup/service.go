package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/sidecar/internal/server"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Archiver is what the service needs of the running streamer.
type Archiver interface {
	Archive() *walarchive.Archive
	WaitArchived(ctx context.Context, lsn walarchive.LSN) error
}

// ServiceConfig configures the API's backup service.
type ServiceConfig struct {
	PG       *pgconn.Config
	Storage  storage.Storage
	Key      walarchive.Key
	Streamer Archiver
	Logger   *slog.Logger
	Metrics  *metrics.Metrics
}

// Service runs base backups for the HTTP API, one at a time, and answers catalog and
// prune requests.
type Service struct {
	cfg  ServiceConfig
	mu   sync.Mutex
	jobs map[string]*apiclient.BackupJob
	run  *apiclient.BackupJob
	seq  int
	// lastSuccess is what the last-success gauge holds (seedAlertGauges never moves it back).
	lastSuccess time.Time
}

var _ server.Backups = (*Service)(nil)

// NewService returns a service.
func NewService(cfg ServiceConfig) *Service {
	return &Service{cfg: cfg, jobs: map[string]*apiclient.BackupJob{}}
}

// Start begins a backup in the background.
func (s *Service) Start(ctx context.Context) (apiclient.BackupJob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run != nil {
		return apiclient.BackupJob{}, &server.RunningJobError{Job: *s.run}
	}
	if s.cfg.Streamer.Archive() == nil {
		return apiclient.BackupJob{}, errors.New("the sidecar has not connected to PostgreSQL yet; try again shortly")
	}
	// The job ID is the backup's ID once chosen; until then a provisional one.
	s.seq++
	job := &apiclient.BackupJob{ID: fmt.Sprintf("job-%d-%d", time.Now().Unix(), s.seq), State: apiclient.StateRunning, StartedAt: time.Now().UTC()}
	s.jobs[job.ID] = job
	s.run = job
	idReady := make(chan struct{})
	go s.take(job, idReady)
	s.mu.Unlock()
	select {
	case <-idReady:
	case <-time.After(10 * time.Second):
	}
	s.mu.Lock()
	return *job, nil
}

func (s *Service) take(job *apiclient.BackupJob, idReady chan struct{}) {
	m := s.cfg.Metrics
	m.BackupRunning.Set(1)
	defer m.BackupRunning.Set(0)
	once := sync.Once{}
	signal := func() { once.Do(func() { close(idReady) }) }
	defer signal()
	rec, err := Take(context.Background(), Options{
		PG: s.cfg.PG, Storage: s.cfg.Storage, Key: s.cfg.Key, FastCheckpoint: true, ZstdWorkers: DefaultZstdWorkers,
		WaitArchived: s.cfg.Streamer.WaitArchived, Logger: s.cfg.Logger,
		OnID: func(id string) {
			s.mu.Lock()
			s.jobs[id] = job
			job.ID = id
			s.mu.Unlock()
			signal()
		},
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.run = nil
	now := time.Now()
	if err != nil {
		job.State, job.Error = apiclient.StateFailed, err.Error()
		m.Backups.WithLabelValues("failure").Inc()
		m.BackupLastFailure.Set(float64(now.Unix()))
		s.cfg.Logger.Error("base backup failed", "job", job.ID, "err", err)
		return
	}
	info := infoOf(rec)
	job.State, job.Backup = apiclient.StateCompleted, &info
	m.Backups.WithLabelValues("success").Inc()
	m.BackupLastSuccess.Set(float64(now.Unix()))
	s.lastSuccess = now
	m.BackupLastDuration.Set(rec.StopTime.Sub(rec.StartTime).Seconds())
	m.BackupLastSize.Set(float64(rec.StoredBytes()))
}

// Job returns a job by ID.
func (s *Service) Job(id string) (apiclient.BackupJob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return apiclient.BackupJob{}, false
	}
	return *j, true
}

// Catalog summarizes the archive.
func (s *Service) Catalog(ctx context.Context) (apiclient.Catalog, error) {
	a := s.cfg.Streamer.Archive()
	if a == nil {
		return apiclient.Catalog{}, errors.New("the sidecar has not connected to PostgreSQL yet")
	}
	sum, err := a.Summarize(ctx)
	if err != nil {
		return apiclient.Catalog{}, err
	}
	cat := CatalogOf(sum)
	s.seedAlertGauges(sum)
	if cat.Window != nil {
		s.cfg.Metrics.RecoveryWindowStart.Set(float64(cat.Window.Earliest.Unix()))
		s.cfg.Metrics.RecoveryWindowEnd.Set(float64(cat.Window.Latest.Unix()))
	}
	s.cfg.Metrics.RecoveryRanges.Reset()
	for _, tli := range sum.Timelines {
		s.cfg.Metrics.RecoveryRanges.WithLabelValues(strconv.FormatUint(uint64(tli), 10)).Set(float64(len(sum.Windows[tli])))
	}
	return cat, nil
}

// seedAlertGauges sets the gauges behind alerts from what the archive holds, so that a
// restarted sidecar does not resolve an alert the archive still justifies: the newest
// backup's stop time for the last success (never moving it back), and, while the live
// timeline's newest range ends at a hole (WAL lost after the newest backup, which only a
// newer backup cures), the time of this reading for the last gap.
func (s *Service) seedAlertGauges(sum walarchive.Summary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range sum.Backups {
		if t := b.StopTime; t.After(s.lastSuccess) {
			s.lastSuccess = t
			s.cfg.Metrics.BackupLastSuccess.Set(float64(t.Unix()))
		}
	}
	if sum.Window != nil && sum.Window.Hole {
		s.cfg.Metrics.ArchiveGapLast.Set(float64(time.Now().Unix()))
	}
}

// RefreshGauges reads the archive once it is open, then every interval, to keep the
// gauges behind alerts true across restarts (seedAlertGauges). It runs until ctx ends.
func (s *Service) RefreshGauges(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	seeded := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.cfg.Streamer.Archive() == nil {
			continue
		}
		if _, err := s.Catalog(ctx); err != nil {
			s.cfg.Logger.Debug("could not read the archive to refresh the alert gauges", "err", err)
			continue
		}
		if !seeded {
			seeded = true
			t.Reset(interval)
		}
	}
}

// CatalogOf converts a summary to the API's form.
func CatalogOf(sum walarchive.Summary) apiclient.Catalog {
	cat := apiclient.Catalog{Backups: []apiclient.BackupInfo{}, Timelines: sum.Timelines}
	if cat.Timelines == nil {
		cat.Timelines = []uint32{}
	}
	for _, b := range sum.Backups {
		cat.Backups = append(cat.Backups, infoOf(b))
	}
	if sum.Window != nil {
		w := apiWindow(*sum.Window)
		cat.Window = &w
	}
	cat.LiveTimeline = sum.LiveTimeline
	cat.Windows = []apiclient.RecoveryWindow{}
	for _, tli := range sum.Timelines {
		for _, w := range sum.Windows[tli] {
			cat.Windows = append(cat.Windows, apiWindow(w))
		}
	}
	return cat
}

func apiWindow(w walarchive.Window) apiclient.RecoveryWindow {
	return apiclient.RecoveryWindow{Timeline: w.Timeline, Earliest: w.Earliest, Latest: w.Latest, Hole: w.Hole}
}

func infoOf(b walarchive.BackupRecord) apiclient.BackupInfo {
	return apiclient.BackupInfo{
		ID: b.ID, StartTime: b.StartTime, StopTime: b.StopTime, StartLSN: b.StartLSN.String(), StopLSN: b.StopLSN.String(),
		Timeline: b.Timeline, SizeBytes: int64(b.StoredBytes()), DataBytes: int64(b.DataBytes()),
	}
}

// Prune applies retention.
func (s *Service) Prune(ctx context.Context, req apiclient.PruneRequest) (apiclient.PruneResult, error) {
	a := s.cfg.Streamer.Archive()
	if a == nil {
		return apiclient.PruneResult{}, errors.New("the sidecar has not connected to PostgreSQL yet")
	}
	r := walarchive.Retention{KeepBackups: req.KeepBackups}
	if req.KeepWithin != "" {
		d, err := time.ParseDuration(req.KeepWithin)
		if err != nil {
			return apiclient.PruneResult{}, fmt.Errorf("invalid keepWithin %q: %w", req.KeepWithin, err)
		}
		r.KeepWithin = d
	}
	res := apiclient.PruneResult{RemovedBackups: []string{}}
	if r.KeepBackups == 0 && r.KeepWithin == 0 {
		return res, nil // the contract: no limits, nothing removed
	}
	plan, err := a.PlanPrune(ctx, r, time.Now())
	if err != nil {
		return res, err
	}
	if err := a.Prune(ctx, plan); err != nil {
		return res, err
	}
	for _, b := range plan.RemoveBackups {
		res.RemovedBackups = append(res.RemovedBackups, b.ID)
	}
	res.RemovedWALObjects = len(plan.RemoveWAL)
	return res, nil
}
