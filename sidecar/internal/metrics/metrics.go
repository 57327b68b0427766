// Package metrics defines every Prometheus metric the sidecar exports, on a private
// registry. The names are a contract with deploy/monitoring (alerts and dashboard).
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

// Metrics holds the sidecar's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	Up                  prometheus.Gauge
	StorageUp           prometheus.Gauge
	ArchivedLSN         prometheus.Gauge
	ServerFlushLSN      prometheus.Gauge
	ArchiveLagBytes     prometheus.Gauge
	ArchiveLagSeconds   prometheus.Gauge
	LastArchivedSegment prometheus.Gauge
	Uploads             *prometheus.CounterVec
	UploadErrors        *prometheus.CounterVec
	UploadedBytes       *prometheus.CounterVec
	// UploadSeconds is how long each successful upload took, by kind: a synchronous
	// commit waits about one tail part's upload.
	UploadSeconds       *prometheus.HistogramVec
	ReceivedWALBytes    prometheus.Counter
	SlotRetainedBytes   prometheus.Gauge
	PGDataVolumeFree    prometheus.Gauge
	PGDataVolumeSize    prometheus.Gauge
	SpoolBytes          prometheus.Gauge
	Timeline            prometheus.Gauge
	BackupRunning       prometheus.Gauge
	Backups             *prometheus.CounterVec
	BackupLastSuccess   prometheus.Gauge
	BackupLastFailure   prometheus.Gauge
	BackupLastDuration  prometheus.Gauge
	BackupLastSize      prometheus.Gauge
	RecoveryWindowStart prometheus.Gauge
	RecoveryWindowEnd   prometheus.Gauge
	// RecoveryRanges counts the restorable ranges per timeline (more than one: a hole).
	RecoveryRanges *prometheus.GaugeVec
	ArchiveGaps    prometheus.Counter
	// ArchiveGapLast is when the last gap was found: by streaming, or by reading the archive
	// back (a hole after the newest backup), at start and every 5 minutes (0: none).
	ArchiveGapLast prometheus.Gauge
	WALServed      *prometheus.CounterVec
}

// Upload kinds (label "kind").
const (
	KindSegment = "segment"
	KindPartial = "partial"
	KindHistory = "history"
	KindBackup  = "backup"
)

// New creates the metrics on a new private registry (with Go and process collectors, and
// kcbackup_build_info naming this binary's version, revision and Go release).
func New() *Metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kcbackup", Name: name, Help: help})
	}
	m := &Metrics{
		Registry:            prometheus.NewRegistry(),
		Up:                  g("up", "1 while the sidecar is connected to PostgreSQL and streaming WAL."),
		StorageUp:           g("storage_up", "0 while uploads to the archive storage fail, 1 otherwise."),
		ArchivedLSN:         g("archived_lsn_bytes", "LSN of the end of the WAL durable in the archive."),
		ServerFlushLSN:      g("server_flush_lsn_bytes", "The server's WAL end as last reported by PostgreSQL."),
		ArchiveLagBytes:     g("archive_lag_bytes", "Bytes of WAL the server has that are not yet in the archive."),
		ArchiveLagSeconds:   g("archive_lag_seconds", "Age of the oldest received WAL not yet in the archive (0 when caught up)."),
		LastArchivedSegment: g("last_archived_segment_timestamp_seconds", "When the last complete WAL segment was archived."),
		Uploads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kcbackup", Name: "uploads_total",
			Help: "Objects uploaded to the archive, by kind (segment, partial, history, backup)."}, []string{"kind"}),
		UploadErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kcbackup", Name: "upload_errors_total",
			Help: "Failed uploads to the archive, by kind."}, []string{"kind"}),
		UploadedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kcbackup", Name: "uploaded_bytes_total",
			Help: "Bytes uploaded, raw (before compression) and compressed (as stored)."}, []string{"encoding"}),
		UploadSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kcbackup", Name: "upload_duration_seconds",
			Help:    "Duration of successful uploads to the archive, by kind (a synchronous commit waits about one partial's).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"kind"}),
		ReceivedWALBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kcbackup", Name: "received_wal_bytes_total",
			Help: "WAL bytes received from PostgreSQL."}),
		SlotRetainedBytes: g("slot_retained_bytes", "WAL the server retains for the sidecar's replication slot (server WAL end minus the slot's restart_lsn, read every 5 s)."),
		PGDataVolumeFree:  g("pgdata_volume_free_bytes", "Free bytes on the volume holding the PostgreSQL data directory (needs --pgdata)."),
		PGDataVolumeSize:  g("pgdata_volume_size_bytes", "Size of the volume holding the PostgreSQL data directory (needs --pgdata)."),
		SpoolBytes:        g("spool_bytes", "Bytes of WAL in the local spool waiting for upload."),
		Timeline:          g("timeline", "The timeline being archived."),
		BackupRunning:     g("backup_running", "1 while a base backup runs."),
		Backups: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kcbackup", Name: "backups_total",
			Help: "Base backups finished, by result (success, failure)."}, []string{"result"}),
		BackupLastSuccess:   g("backup_last_success_timestamp_seconds", "When the last successful base backup finished."),
		BackupLastFailure:   g("backup_last_failure_timestamp_seconds", "When the last failed base backup ended."),
		BackupLastDuration:  g("backup_last_duration_seconds", "Duration of the last successful base backup."),
		BackupLastSize:      g("backup_last_size_bytes", "Stored size of the last successful base backup."),
		RecoveryWindowStart: g("recovery_window_start_timestamp_seconds", "Start of the live timeline's newest restorable range: every time from here to the end restores."),
		RecoveryWindowEnd:   g("recovery_window_end_timestamp_seconds", "Latest time the archive can restore to."),
		RecoveryRanges: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kcbackup", Name: "recovery_ranges",
			Help: "Restorable ranges of each timeline's path; more than one means a hole in the WAL splits it."}, []string{"timeline"}),
		ArchiveGaps: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kcbackup", Name: "archive_gaps_total",
			Help: "Times streaming had to skip WAL the server no longer had (the archive has a gap; take a new base backup)."}),
		ArchiveGapLast: g("archive_gap_last_timestamp_seconds", "When streaming last had to skip WAL the server no longer had, or a reading of the archive last found a hole after the newest backup (0: none); restores cannot cross it until a newer base backup exists."),
		WALServed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kcbackup", Name: "wal_served_total",
			Help: "WAL files served to restore_command through the sidecar, by source (cache: prefetched, archive: fetched on demand)."}, []string{"source"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Get().Collector(),
		m.Up, m.StorageUp, m.ArchivedLSN, m.ServerFlushLSN, m.ArchiveLagBytes, m.ArchiveLagSeconds, m.LastArchivedSegment,
		m.Uploads, m.UploadErrors, m.UploadedBytes, m.ReceivedWALBytes, m.SlotRetainedBytes, m.PGDataVolumeFree,
		m.PGDataVolumeSize, m.SpoolBytes, m.Timeline, m.BackupRunning, m.Backups, m.BackupLastSuccess, m.BackupLastFailure,
		m.BackupLastDuration, m.BackupLastSize, m.RecoveryWindowStart, m.RecoveryWindowEnd, m.RecoveryRanges, m.ArchiveGaps, m.ArchiveGapLast, m.WALServed, m.UploadSeconds,
	)
	for _, k := range []string{KindSegment, KindPartial, KindHistory, KindBackup} {
		m.Uploads.WithLabelValues(k)
		m.UploadErrors.WithLabelValues(k)
	}
	m.UploadedBytes.WithLabelValues("raw")
	m.UploadedBytes.WithLabelValues("compressed")
	m.Backups.WithLabelValues("success")
	m.Backups.WithLabelValues("failure")
	m.StorageUp.Set(1)
	return m
}
