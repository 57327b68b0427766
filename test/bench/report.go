package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Results is everything one run measured; it is written as results.json. Times are in
// seconds; a nil figure was not measured (or, for lag percentiles, fell on a sample the
// archive never reached within the drain window).
type Results struct {
	StartedAt  time.Time         `json:"startedAt"`
	Duration   string            `json:"duration"`
	Machine    string            `json:"machine"`
	Config     Config            `json:"config"`
	Lag        []LagResult       `json:"lag"`
	Sync       []SyncResult      `json:"sync,omitempty"`
	Async      []LagResult       `json:"async,omitempty"`
	Sidecar    *SidecarUsage     `json:"sidecar,omitempty"`
	Catchup    *CatchupResult    `json:"catchup,omitempty"`
	BaseBackup *BaseBackupResult `json:"baseBackup,omitempty"`
	Restore    *RestoreResult    `json:"restore,omitempty"`
	WALFetch   *WALFetchResult   `json:"walFetch,omitempty"`
	Storage    []StorageRatio    `json:"storage,omitempty"`
	Errors     []string          `json:"errors,omitempty"`
}

// LagResult is one lag run: archive lag percentiles and pgbench's TPS.
type LagResult struct {
	Method     string   `json:"method"`
	TPS        float64  `json:"tps"`
	Samples    int      `json:"samples"`
	Unresolved int      `json:"unresolved"`
	WALBytes   int64    `json:"walBytes"`
	P50        *float64 `json:"p50Seconds"`
	P99        *float64 `json:"p99Seconds"`
	Max        *float64 `json:"maxSeconds"`
	// RTTSeconds is the store round trip the proxy added (kcbackup runs only).
	RTTSeconds float64 `json:"rttSeconds,omitempty"`
	// PartialInterval is kcbackup's --partial-interval (kcbackup runs only).
	PartialInterval string `json:"partialInterval,omitempty"`
	// WithinSegment and AcrossSegmentEnd split the lag samples of a kcbackup run: those
	// whose WAL ended in the segment the durable position was in, and those that waited for
	// a segment's end (its complete object) to be archived.
	WithinSegment    LagSplit `json:"withinSegment"`
	AcrossSegmentEnd LagSplit `json:"acrossSegmentEnd"`
	// DefaultInterval marks the asynchronous run at kcbackup's default --partial-interval.
	DefaultInterval bool `json:"defaultInterval,omitempty"`
	// Uploads is what the sidecar uploaded during the run (kcbackup runs only).
	Uploads uploadCounters `json:"uploads"`
}

// SidecarUsage is the sidecar's resource use during its lag run.
type SidecarUsage struct {
	PeakRSSBytes int64   `json:"peakRSSBytes"`
	CPUSeconds   float64 `json:"cpuSeconds"`
	WallSeconds  float64 `json:"wallSeconds"`
}

// CatchupResult is the drain of a WAL backlog.
type CatchupResult struct {
	BacklogBytes int64   `json:"backlogBytes"`
	Seconds      float64 `json:"seconds"`
	MiBPerSecond float64 `json:"mibPerSecond"`
	RTTSeconds   float64 `json:"rttSeconds"`
}

// BaseBackupResult is the wall time and size of one base backup per tool.
type BaseBackupResult struct {
	Scale           int     `json:"scale"`
	DatabaseBytes   int64   `json:"databaseBytes"`
	PlainSeconds    float64 `json:"pgBasebackupSeconds"`
	PlainBytes      int64   `json:"pgBasebackupBytes"`
	GzipSeconds     float64 `json:"pgBasebackupGzipSeconds"`
	GzipBytes       int64   `json:"pgBasebackupGzipBytes"`
	KcbackupSeconds float64 `json:"kcbackupSeconds"`
	KcbackupBytes   int64   `json:"kcbackupBytes"`
	// Variants are kcbackup backup with other settings than the defaults, for choosing them.
	Variants []BackupVariant `json:"variants"`
}

// BackupVariant is one kcbackup backup run with non-default flags.
type BackupVariant struct {
	Flags   string  `json:"flags"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
}

// RestoreResult is the wall time of restore plus replay to the end of the archive.
type RestoreResult struct {
	WALBytes      int64        `json:"walBytes"`
	CpSeconds     float64      `json:"cpRecoverySeconds"`
	CpCopySeconds float64      `json:"cpRecoveryCopySeconds"`
	Runs          []RestoreRun `json:"kcbackup"`
}

// RestoreRun is kcbackup restore with and without prefetch at one store round trip.
type RestoreRun struct {
	RTTSeconds               float64 `json:"rttSeconds"`
	PrefetchSeconds          float64 `json:"prefetchSeconds"`
	PrefetchRestoreSeconds   float64 `json:"prefetchRestoreSeconds"`
	NoPrefetchSeconds        float64 `json:"noPrefetchSeconds"`
	NoPrefetchRestoreSeconds float64 `json:"noPrefetchRestoreSeconds"`
}

// WALFetchResult is the latency of single wal-fetch calls.
type WALFetchResult struct {
	Segments        int      `json:"segments"`
	GapSeconds      float64  `json:"gapSeconds"`
	PlainP50        *float64 `json:"plainP50Seconds"`
	PlainP99        *float64 `json:"plainP99Seconds"`
	PrefetchedP50   *float64 `json:"prefetchedP50Seconds"`
	PrefetchedP99   *float64 `json:"prefetchedP99Seconds"`
	PrefetchedCalls int      `json:"prefetchedCalls"`
	// Ready* are the prefetch calls whose segment was already downloaded when they started.
	ReadyP50   *float64 `json:"readyP50Seconds"`
	ReadyP99   *float64 `json:"readyP99Seconds"`
	ReadyCalls int      `json:"readyCalls"`
	// Alone* are the same prefetched calls made by `kcbackup wal-fetch` itself, without
	// restore_command's shell fast path.
	AloneReadyP50   *float64 `json:"aloneReadyP50Seconds"`
	AloneReadyP99   *float64 `json:"aloneReadyP99Seconds"`
	AloneReadyCalls int      `json:"aloneReadyCalls"`
	AloneCalls      int      `json:"aloneCalls"`
}

// StorageRatio is the stored size of an archive's WAL per WAL byte archived.
type StorageRatio struct {
	Workload    string  `json:"workload"`
	WALBytes    int64   `json:"walBytes"`
	StoredBytes int64   `json:"storedBytes"`
	Objects     int     `json:"objects"`
	Ratio       float64 `json:"ratio"`
}

// row is one line of the results table.
type row struct{ measurement, method, figure, target, verdict string }

// table is the results table, printed as text and as Markdown.
type table struct {
	header string
	rows   []row
	notes  []string
}

const notMeasured = "not measured"

// targetRTT is the store round trip the restore and catch-up targets are set at.
const targetRTT = 60 * time.Millisecond

// fmtRTT names a store round trip the proxy added.
func fmtRTT(secs float64) string {
	return fmt.Sprintf("RTT %s", time.Duration(secs*float64(time.Second)).Round(time.Millisecond))
}

// verdict turns a comparison into the table's wording.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// buildTable lays the results out side by side, with each target beside its figure.
func buildTable(r *Results) table {
	c := r.Config
	t := table{header: fmt.Sprintf("kcbackup benchmark, %s, run took %s (pgbench -c %d -j %d), on %s",
		r.StartedAt.Format(time.RFC3339), r.Duration, c.Clients, c.Jobs, r.Machine)}
	add := func(m, meth, fig, target, v string) { t.rows = append(t.rows, row{m, meth, fig, target, v}) }

	// Archive lag and TPS.
	lagName := fmt.Sprintf("Archive lag p50/p99/max (-s %d, %s)", c.LagScale, c.LagDuration)
	byMethod := map[string]LagResult{}
	for _, l := range r.Lag {
		byMethod[l.Method] = l
	}
	for _, m := range []string{methodKcbackup, methodKcbackupRTT, methodReceive, methodReceiveSync, methodArchiveCmd} {
		l, ok := byMethod[m]
		target, v := "", ""
		label := m
		switch m {
		case methodKcbackup:
			target, v = "p99 <= 1 s", notMeasured
		case methodKcbackupRTT:
			if !ok {
				continue
			}
			label = fmt.Sprintf("kcbackup run, store %s", fmtRTT(l.RTTSeconds))
			target = fmt.Sprintf("p99 <= 2x one upload (%.0f ms)", l.Uploads.OneUploadSeconds*1000)
		}
		if !ok {
			add(lagName, label, notMeasured, target, v)
			continue
		}
		fig := fmt.Sprintf("%s / %s / %s", fmtSec(l.P50), fmtSec(l.P99), fmtSec(l.Max))
		if l.Unresolved > 0 {
			fig += fmt.Sprintf(" (%d of %d samples not durable %s after the load)", l.Unresolved, l.Samples, c.DrainWindow)
		}
		switch m {
		case methodKcbackup:
			v = verdict(l.P99 != nil && *l.P99 <= 1)
		case methodKcbackupRTT:
			v = verdict(l.P99 != nil && *l.P99 <= 2*l.Uploads.OneUploadSeconds)
		}
		add(lagName, label, fig, target, v)
	}
	for _, m := range []string{methodKcbackup, methodKcbackupRTT} {
		l, ok := byMethod[m]
		if !ok || l.Uploads.WALBytes <= 0 {
			continue
		}
		add("Upload amplification (uploaded / WAL received)", fmt.Sprintf("kcbackup run, store %s", fmtRTT(l.RTTSeconds)), uploadFigure(l.Uploads), "", "")
	}
	tpsName := fmt.Sprintf("pgbench TPS (-s %d, %s)", c.LagScale, c.LagDuration)
	base, haveBase := byMethod[methodNone]
	for _, m := range []string{methodNone, methodKcbackup, methodReceive, methodReceiveSync, methodArchiveCmd} {
		l, ok := byMethod[m]
		target, v := "", ""
		if m == methodKcbackup {
			target, v = ">= 95% of no archiving", notMeasured
		}
		if !ok {
			add(tpsName, m, notMeasured, target, v)
			continue
		}
		fig := fmt.Sprintf("%.0f", l.TPS)
		if haveBase && m != methodNone && base.TPS > 0 {
			fig += fmt.Sprintf(" (%.1f%%)", 100*l.TPS/base.TPS)
			if m == methodKcbackup {
				v = verdict(l.TPS >= 0.95*base.TPS)
			}
		}
		add(tpsName, m, fig, target, v)
	}
	syncRows(r, add)
	asyncRows(r, add)
	if s := r.Sidecar; s != nil {
		add("Sidecar peak RSS (VmHWM, lag run)", methodKcbackup, fmt.Sprintf("%.1f MiB", float64(s.PeakRSSBytes)/(1<<20)), "<= 100 MiB",
			verdict(s.PeakRSSBytes <= 100<<20))
		add("Sidecar CPU (utime+stime, lag run)", methodKcbackup, fmt.Sprintf("%.1f s in %.0f s (%.0f%% of a core)", s.CPUSeconds, s.WallSeconds, 100*s.CPUSeconds/s.WallSeconds), "", "")
	} else {
		add("Sidecar peak RSS (VmHWM, lag run)", methodKcbackup, notMeasured, "<= 100 MiB", notMeasured)
	}

	// Catch-up.
	if cu := r.Catchup; cu != nil {
		target, v := "", ""
		if cu.RTTSeconds >= targetRTT.Seconds() {
			target, v = ">= 100 MiB/s", verdict(cu.MiBPerSecond >= 100)
		}
		add("Catch-up drain to MinIO, store "+fmtRTT(cu.RTTSeconds), methodKcbackup, fmt.Sprintf("%.1f MiB/s (%d MiB in %.1f s)", cu.MiBPerSecond, cu.BacklogBytes>>20, cu.Seconds), target, v)
	} else {
		add("Catch-up drain to MinIO", methodKcbackup, notMeasured, "", "")
	}

	// Base backup.
	bbName := fmt.Sprintf("Base backup wall time (-s %d, -c fast)", c.BackupScale)
	if b := r.BaseBackup; b != nil {
		bbName = fmt.Sprintf("Base backup wall time (-s %d, %d MiB, -c fast)", b.Scale, b.DatabaseBytes>>20)
		add(bbName, "pg_basebackup -Ft -X none (local)", fmt.Sprintf("%.1f s, %d MiB", b.PlainSeconds, b.PlainBytes>>20), "", "")
		add(bbName, "pg_basebackup -Ft -X none -z (local)", fmt.Sprintf("%.1f s, %d MiB (%.2fx plain)", b.GzipSeconds, b.GzipBytes>>20, b.GzipSeconds/b.PlainSeconds), "", "")
		add(bbName, "kcbackup backup (server zstd, MinIO)", fmt.Sprintf("%.1f s, %d MiB (%.2fx plain)", b.KcbackupSeconds, b.KcbackupBytes>>20, b.KcbackupSeconds/b.PlainSeconds),
			"<= 0.8x pg_basebackup -Ft", verdict(b.KcbackupSeconds <= 0.8*b.PlainSeconds))
		for _, v := range b.Variants {
			add(bbName, "kcbackup backup "+v.Flags, fmt.Sprintf("%.1f s, %d MiB (%.2fx plain)", v.Seconds, v.Bytes>>20, v.Seconds/b.PlainSeconds), "", "")
		}
	} else {
		add(bbName, "kcbackup backup (server zstd, MinIO)", notMeasured, "<= 0.8x pg_basebackup -Ft", notMeasured)
	}

	// Restore.
	rsName := fmt.Sprintf("Restore + replay to latest (>= %d MiB WAL)", c.RestoreWALMiB)
	if rs := r.Restore; rs != nil {
		rsName = fmt.Sprintf("Restore + replay to latest (%d MiB WAL)", rs.WALBytes>>20)
		add(rsName, "pg_basebackup copy + restore_command cp", fmt.Sprintf("%.1f s (copy %.1f s)", rs.CpSeconds, rs.CpCopySeconds), "", "")
		for _, run := range rs.Runs {
			rtt := fmtRTT(run.RTTSeconds)
			target1, v1, target2, v2 := "", "", "", ""
			if run.RTTSeconds >= targetRTT.Seconds() {
				target1, v1 = "<= 1.2x cp recovery", verdict(run.PrefetchSeconds <= 1.2*rs.CpSeconds)
				target2, v2 = "prefetch 8 >= 3x faster", verdict(run.NoPrefetchSeconds >= 3*run.PrefetchSeconds)
			}
			add(rsName, "kcbackup restore, prefetch 8, store "+rtt, fmt.Sprintf("%.1f s (restore %.1f s) = %.2fx cp", run.PrefetchSeconds, run.PrefetchRestoreSeconds, run.PrefetchSeconds/rs.CpSeconds), target1, v1)
			add(rsName, "kcbackup restore, prefetch 0, store "+rtt, fmt.Sprintf("%.1f s (restore %.1f s); prefetch 8 is %.2fx faster", run.NoPrefetchSeconds, run.NoPrefetchRestoreSeconds, run.NoPrefetchSeconds/run.PrefetchSeconds), target2, v2)
		}
	} else {
		add(rsName, "kcbackup restore", notMeasured, "<= 1.2x cp; >= 3x vs prefetch 0", notMeasured)
	}

	// wal-fetch.
	if w := r.WALFetch; w != nil {
		name := fmt.Sprintf("wal-fetch latency p50/p99 (%d segments)", w.Segments)
		add(name, "not prefetched", fmt.Sprintf("%s / %s", fmtMs(w.PlainP50), fmtMs(w.PlainP99)), "", "")
		add(name, "restore_command, --prefetch 8 (all later calls)", fmt.Sprintf("%s / %s", fmtMs(w.PrefetchedP50), fmtMs(w.PrefetchedP99)), "", "")
		add(name, fmt.Sprintf("restore_command, --prefetch 8, segment already prefetched (%d of %d calls)", w.ReadyCalls, w.PrefetchedCalls),
			fmt.Sprintf("%s / %s", fmtMs(w.ReadyP50), fmtMs(w.ReadyP99)), "p50 <= 5 ms", verdict(w.ReadyP50 != nil && *w.ReadyP50 <= 0.005))
		if w.AloneCalls > 0 {
			add(name, fmt.Sprintf("kcbackup wal-fetch alone, --prefetch 8, already prefetched (%d of %d calls)", w.AloneReadyCalls, w.AloneCalls),
				fmt.Sprintf("%s / %s", fmtMs(w.AloneReadyP50), fmtMs(w.AloneReadyP99)), "", "")
		}
	} else {
		add("wal-fetch latency p50/p99", "--prefetch 8", notMeasured, "p50 <= 5 ms", notMeasured)
	}

	// Storage.
	for _, s := range r.Storage {
		add("Stored bytes per WAL byte", s.Workload, fmt.Sprintf("%.3f (%d MiB stored for %d MiB WAL, %d objects)", s.Ratio, s.StoredBytes>>20, s.WALBytes>>20, s.Objects), "", "")
	}
	if len(r.Storage) == 0 {
		add("Stored bytes per WAL byte", methodKcbackup, notMeasured, "", "")
	}

	t.notes = append(t.notes,
		"Upload amplification: the live tail goes up as appended parts, each holding only the bytes since the last, and every segment goes up once more as one complete object when it ends, so raw bytes are about 2x the WAL by design; parts vs complete segments are split with kcbackup_uploads_total{kind}: a complete segment is always one segment size raw, the rest of kcbackup_uploaded_bytes_total{encoding=\"raw\"} went up in parts. PUTs/s = kcbackup_uploads_total{kind=\"partial\"|\"segment\"} delta / the time between the readings (before and after the load; after the drain in lag runs); the parts' DELETEs after their segment is stored, and listings, are further requests not counted. One upload: the median PUT of the run's average object size from the bench to the same store.",
		fmt.Sprintf("Lag: pg_current_wal_lsn() sampled every %s and each method's durable position every %s; lag of a sample = first later time the durable position reached it. Durable: kcbackup archivedLSN (/v1/status, --partial-interval %s unless the row says otherwise); pg_receivewal flush_lsn in pg_stat_replication; archive_command end of last_archived_wal (archive_timeout %s).", sampleInterval, durableInterval, c.partialIntervalName(), c.ArchiveTimeout),
		"Restore times run from the start of the restore (or of copying the base backup) to pg_is_in_recovery() = false.",
		"Store RTT: every S3 request goes to MinIO on loopback through a proxy in the bench that delays each direction by half the round trip (and a new connection's first bytes by one more round trip, for its handshake).",
	)
	if len(r.Sync) > 0 {
		t.notes = append(t.notes, "Synchronous mode: each standby is the server's only synchronous standby (synchronous_standby_names = its application_name, pg_receivewal or kcbackup; synchronous_commit = on), checked in pg_stat_replication (sync_state = sync) before and after the load; kcbackup runs with --partial-interval 0. Latency is per transaction from pgbench --log, its COMMIT included, so it bounds the commit's wait from above; with -b simple-update no transaction waits for another's row lock, so it is the commit's wait plus three statements on loopback (with tpcb-like it also counts waits for the commits of others holding the same branch row). COMMIT avg is pgbench -r's average of the script's END. Ratios are to pg_receivewal --synchronous in the same run.")
	}
	if w := r.WALFetch; w != nil {
		t.notes = append(t.notes, fmt.Sprintf("wal-fetch calls run one after another with a gap of %s standing in for replay, each a new process; \"restore_command\" runs the command kcbackup restore writes as PostgreSQL does (sh -c: the shell renames a prefetched segment, else starts wal-fetch); \"already prefetched\" counts the calls whose segment was in the prefetch directory when they started.", time.Duration(w.GapSeconds*float64(time.Second))))
	}
	for _, e := range r.Errors {
		t.notes = append(t.notes, "ERROR "+e)
	}
	return t
}

// verdictWhy is verdict with the figure that decided it.
func verdictWhy(ok bool, why string) string { return verdict(ok) + " (" + why + ")" }

// uploadFigure describes what kcbackup uploaded for the WAL it received.
func uploadFigure(u uploadCounters) string {
	if u.WALBytes <= 0 {
		return "no WAL received"
	}
	return fmt.Sprintf("raw %.2fx WAL (parts %.2fx + complete segments %.2fx), stored %.2fx; %.1f PUTs/s (%.0f parts, %.0f segments in %.0f s, %.0f MiB WAL)",
		u.RawBytes/u.WALBytes, u.partRawBytes()/u.WALBytes, u.Segments*u.SegmentBytes/u.WALBytes, u.StoredBytes/u.WALBytes,
		u.putsPerSecond(), u.Parts, u.Segments, u.Seconds, u.WALBytes/(1<<20))
}

// syncRows adds the synchronous-mode rows: each standby's TPS and latency, kcbackup's
// beside pg_receivewal --synchronous.
func syncRows(r *Results, add func(m, meth, fig, target, v string)) {
	c := r.Config
	if len(r.Sync) == 0 {
		if c.runs("sync") {
			add("Synchronous mode", methodKcbackup+" --partial-interval 0", notMeasured, "TPS >= 0.8x pg_receivewal --synchronous; p99 <= 2 RTT", notMeasured)
		}
		return
	}
	name := fmt.Sprintf("Synchronous mode: pgbench -b %s TPS; transaction latency p50/p99/max (-s %d, %s, synchronous_commit on)", c.SyncScript, c.LagScale, c.LagDuration)
	var base *SyncResult
	for i := range r.Sync {
		if r.Sync[i].Method == syncReceive {
			base = &r.Sync[i]
		}
	}
	for _, s := range r.Sync {
		label := s.Method
		if s.Method == syncMinIO {
			label += ", store " + fmtRTT(s.RTTSeconds)
		}
		fig := fmt.Sprintf("%.0f tps", s.TPS)
		if base != nil && s.Method != syncReceive && base.TPS > 0 {
			fig += fmt.Sprintf(" (%.2fx pg_receivewal --synchronous)", s.TPS/base.TPS)
		}
		fig += fmt.Sprintf("; latency %s / %s / %s; COMMIT avg %s", fmtMs(s.Latency.P50), fmtMs(s.Latency.P99), fmtMs(s.Latency.Max), fmtMs(s.CommitAvgSeconds))
		if s.Latency.Failed > 0 {
			fig += fmt.Sprintf("; %d of %d transactions failed", s.Latency.Failed, s.Latency.Failed+s.Latency.Transactions)
		}
		if u := s.Uploads; u != nil {
			fig += fmt.Sprintf("; %.1f PUTs/s (%.0f parts, %.0f segments in %.0f s), raw %.2fx WAL", u.putsPerSecond(), u.Parts, u.Segments, u.Seconds, u.RawBytes/u.WALBytes)
		}
		if s.Uploads != nil {
			fig += fmt.Sprintf("; sidecar CPU %.0f%% of a core", 100*s.SidecarCPU)
		}
		var cost []string // what one part costs, measured on the same store after the load
		if s.OnePutSeconds > 0 {
			cost = append(cost, "one PUT of the average part "+fmtMs(&s.OnePutSeconds))
		}
		if s.AppendFsyncSeconds > 0 {
			cost = append(cost, "one append+fsync of that size on the same disk "+fmtMs(&s.AppendFsyncSeconds))
		}
		if len(cost) > 0 {
			fig += "; " + strings.Join(cost, ", ")
		}
		target, v := "", ""
		switch {
		case s.Method == syncFile || (s.Method == syncMinIO && s.RTTSeconds == 0):
			target = "TPS >= 0.8x pg_receivewal --synchronous"
			if base == nil || base.TPS <= 0 {
				v = notMeasured + " (no pg_receivewal --synchronous run)"
			} else {
				ratio := s.TPS / base.TPS
				v = verdictWhy(ratio >= 0.8, fmt.Sprintf("%.2fx; COMMIT avg %s vs %s", ratio, fmtMs(s.CommitAvgSeconds), fmtMs(base.CommitAvgSeconds)))
			}
		case s.Method == syncMinIO:
			limit := 2 * s.RTTSeconds
			target = fmt.Sprintf("latency p99 <= 2 round trips (%.0f ms)", limit*1000)
			v = verdictWhy(s.Latency.P99 != nil && *s.Latency.P99 <= limit, fmt.Sprintf("p99 %s; COMMIT avg %s; one PUT %s", fmtMs(s.Latency.P99), fmtMs(s.CommitAvgSeconds), fmtMs(&s.OnePutSeconds)))
		}
		add(name, label, fig, target, v)
	}
}

// asyncRows adds the asynchronous-mode rows: lag and upload bytes per WAL byte at
// kcbackup's default --partial-interval and a shorter one.
func asyncRows(r *Results, add func(m, meth, fig, target, v string)) {
	c := r.Config
	name := "Asynchronous mode: archive lag p50/p99/max; uploaded per WAL byte; PUTs/s (MinIO, store RTT 0)"
	if len(r.Async) == 0 {
		if c.runs("async") {
			add(name, methodKcbackup, notMeasured, "lag p99 <= 250 ms, raw <= 1.2x WAL", notMeasured)
		}
		return
	}
	for _, l := range r.Async {
		fig := fmt.Sprintf("lag %s / %s / %s", fmtSec(l.P50), fmtSec(l.P99), fmtSec(l.Max))
		if l.Unresolved > 0 {
			fig += fmt.Sprintf(" (%d of %d samples not durable %s after the load)", l.Unresolved, l.Samples, c.DrainWindow)
		}
		fig += fmt.Sprintf(" at %.0f tps (p99 %s over %d samples within a segment, %s over %d waiting for a segment end); ", l.TPS,
			fmtSec(l.WithinSegment.P99), l.WithinSegment.Samples, fmtSec(l.AcrossSegmentEnd.P99), l.AcrossSegmentEnd.Samples) + uploadFigure(l.Uploads)
		target, v := "", ""
		if l.DefaultInterval {
			target = "lag p99 <= 250 ms; raw <= 1.2x WAL"
			u := l.Uploads
			lagOK := l.P99 != nil && *l.P99 <= 0.25
			rawOK := u.WALBytes > 0 && u.RawBytes <= 1.2*u.WALBytes
			var why []string
			lagWhy := "lag p99 " + fmtSec(l.P99)
			if !lagOK {
				lagWhy += fmt.Sprintf(" (%s within a segment, %s across a segment end)", fmtSec(l.WithinSegment.P99), fmtSec(l.AcrossSegmentEnd.P99))
			}
			why = append(why, lagWhy)
			if u.WALBytes > 0 {
				w := fmt.Sprintf("raw %.2fx", u.RawBytes/u.WALBytes)
				if !rawOK {
					w += fmt.Sprintf(": parts carried %.2fx and complete segments %.2fx of the WAL", u.partRawBytes()/u.WALBytes, u.Segments*u.SegmentBytes/u.WALBytes)
				}
				why = append(why, w)
			}
			v = verdictWhy(lagOK && rawOK, strings.Join(why, "; "))
		}
		add(name, "kcbackup run --partial-interval "+l.PartialInterval, fig, target, v)
	}
}

// fmtMs formats optional seconds as milliseconds.
func fmtMs(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f ms", *v*1000)
}

// text renders the table for a terminal.
func (t table) text() string {
	var b strings.Builder
	b.WriteString("\n" + t.header + "\n\n")
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEASUREMENT\tMETHOD\tFIGURE\tTARGET\tRESULT")
	for _, r := range t.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.measurement, r.method, r.figure, r.target, r.verdict)
	}
	tw.Flush()
	b.WriteString("\n")
	for _, n := range t.notes {
		b.WriteString("* " + n + "\n")
	}
	return b.String()
}

// markdown renders the table as GitHub Markdown.
func (t table) markdown() string {
	var b strings.Builder
	b.WriteString(t.header + "\n\n| Measurement | Method | Figure | Target | Result |\n|---|---|---|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, r := range t.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", esc(r.measurement), esc(r.method), esc(r.figure), esc(r.target), esc(r.verdict))
	}
	b.WriteString("\n")
	for _, n := range t.notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

// Markers of the generated table in docs/performance.md.
const (
	readmeBegin = "<!-- bench:begin (generated by make bench; do not edit) -->"
	readmeEnd   = "<!-- bench:end -->"
)

// updateReadme replaces what lies between the markers in the page at path with the table.
func updateReadme(path string, t table) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("update the bench table: %w", err)
	}
	s := string(data)
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("update the bench table: %s lacks the lines %q and %q around it", path, readmeBegin, readmeEnd)
	}
	out := s[:i+len(readmeBegin)] + "\n" + t.markdown() + s[j:]
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		return fmt.Errorf("update the bench table: %w", err)
	}
	progress("updated the table in %s", path)
	return nil
}

// machine describes this machine: processor, cores, memory and the load when the run began
// (other work on the machine makes the figures noisy).
func machine() string {
	model := "unknown processor"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %d GiB", (kb+(1<<19))>>20)
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = fmt.Sprintf(", load average %s %s %s at the start", f[0], f[1], f[2])
		}
	}
	return fmt.Sprintf("%s, %d cores%s%s", model, runtime.NumCPU(), mem, load)
}

// writeResults writes results.json and results.md into dir.
func writeResults(dir string, r *Results, t table) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	for name, data := range map[string][]byte{"results.json": append(js, '\n'), "results.md": []byte(t.markdown())} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	progress("wrote %s and %s", filepath.Join(dir, "results.json"), filepath.Join(dir, "results.md"))
	return nil
}
