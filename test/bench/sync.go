package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// Methods of the synchronous-mode runs: each is the server's only synchronous standby
// (synchronous_standby_names = its application_name, synchronous_commit = on), except the
// baseline without one.
const (
	syncNone    = "no standby"
	syncReceive = "pg_receivewal --synchronous (local disk)"
	syncFile    = "kcbackup synchronous, file:// archive (local disk)"
	syncMinIO   = "kcbackup synchronous, MinIO"
)

// Application names the synchronous runs put in synchronous_standby_names: pg_receivewal's
// default and the sidecar's (sidecar/internal/pgrepl.ApplicationName).
const (
	appReceive  = "pg_receivewal"
	appKcbackup = "kcbackup"
)

// syncSpec is one synchronous-mode run.
type syncSpec struct {
	method string
	// rtt is the store round trip the proxy adds during the load (MinIO runs only).
	rtt time.Duration
}

// SyncResult is one synchronous-mode run: pgbench's TPS and per-transaction latency, and
// for kcbackup what the sidecar uploaded meanwhile.
type SyncResult struct {
	Method          string  `json:"method"`
	ApplicationName string  `json:"applicationName,omitempty"`
	RTTSeconds      float64 `json:"rttSeconds"`
	TPS             float64 `json:"tps"`
	// Latency is from pgbench's per-transaction log (--log): the script's whole
	// transaction, its COMMIT included.
	Latency latencyStats `json:"latency"`
	// CommitAvgSeconds is pgbench -r's average latency of the script's END (the COMMIT).
	CommitAvgSeconds *float64 `json:"commitAvgSeconds"`
	// Uploads is what the sidecar uploaded from just before to just after the load
	// (kcbackup runs only).
	Uploads *uploadCounters `json:"uploads,omitempty"`
	// SidecarCPU is the sidecar's CPU time during the load per second of it (1 = a core).
	SidecarCPU float64 `json:"sidecarCPUCores,omitempty"`
	// OnePutSeconds is the median time of one PUT of the run's average part size from the
	// bench to the same store at the same round trip (kcbackup runs only).
	OnePutSeconds float64 `json:"onePutSeconds,omitempty"`
	// AppendFsyncSeconds is the median time to append that many bytes to an open file and
	// fsync it, on the disk of the file archive: what pg_receivewal does per flush (file
	// run only).
	AppendFsyncSeconds float64 `json:"appendFsyncSeconds,omitempty"`
}

// latencyStats summarises per-transaction latencies, in seconds.
type latencyStats struct {
	Transactions int      `json:"transactions"`
	Failed       int      `json:"failed"`
	Avg          *float64 `json:"avgSeconds"`
	P50          *float64 `json:"p50Seconds"`
	P99          *float64 `json:"p99Seconds"`
	Max          *float64 `json:"maxSeconds"`
}

// syncPhase runs pgbench against each synchronous standby in turn, each on its own fresh
// cluster.
func (e *env) syncPhase(t *benchTB, res *Results) error {
	specs := []syncSpec{{method: syncNone}, {method: syncReceive}, {method: syncFile}, {method: syncMinIO}}
	if e.cfg.SyncRTT > 0 {
		specs = append(specs, syncSpec{method: syncMinIO, rtt: e.cfg.SyncRTT})
	}
	var failed []string
	for _, spec := range specs {
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		name := "sync/" + spec.method
		if spec.method == syncMinIO {
			name += ", store " + fmtRTT(spec.rtt.Seconds())
		}
		r, err := runSub(e.ctx, name, func(t *benchTB) (SyncResult, error) { return e.syncRun(t, spec) })
		if err != nil {
			failed = append(failed, err.Error())
			continue
		}
		res.Sync = append(res.Sync, r)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return nil
}

// syncRun measures one synchronous standby.
func (e *env) syncRun(t *benchTB, spec syncSpec) (SyncResult, error) {
	ctx := e.ctx
	r := SyncResult{Method: spec.method, RTTSeconds: spec.rtt.Seconds()}

	// Step 1: a fresh cluster, loaded before any standby is synchronous.
	pg := e.startCluster(t, e.cfg.LagScale, nil)

	// Step 2: the standby, streaming.
	var sc *harness.Sidecar
	var url, archiveDir string
	switch spec.method {
	case syncReceive:
		r.ApplicationName = appReceive
		if err := startReceiveWAL(t, pg, true); err != nil {
			return r, err
		}
	case syncFile, syncMinIO:
		r.ApplicationName = appKcbackup
		if spec.method == syncMinIO {
			url = e.newArchive(t, "sync")
		} else {
			archiveDir = filepath.Join(t.TempDir(), "archive")
			url = "file://" + archiveDir
		}
		sc = e.startSidecarInterval(t, pg, url, 0)
		cur, err := currentLSN(ctx, pg)
		if err != nil {
			return r, err
		}
		if _, err := waitArchived(ctx, sc, cur, time.Minute); err != nil {
			return r, err
		}
	}

	// Step 3: make it the synchronous standby and see the server report it as such.
	if r.ApplicationName != "" {
		if err := makeSynchronous(ctx, pg, r.ApplicationName); err != nil {
			return r, err
		}
	}
	if spec.rtt > 0 {
		e.store.SetRTT(spec.rtt)
		defer e.store.SetRTT(0)
	}

	// Step 4: the load, with per-transaction logs.
	var before uploadCounters
	var err error
	var pid int
	var cpuBefore float64
	if sc != nil {
		if before, err = readUploadCounters(sc); err != nil {
			return r, err
		}
		if pid, err = childPID(strings.TrimPrefix(sc.URL(), "http://")); err != nil {
			return r, err
		}
		if cpuBefore, err = procCPUSeconds(pid); err != nil {
			return r, err
		}
	}
	progress("%s: pgbench -b %s -c %d -j %d -T %s, synchronous_standby_names %q, store round trip %s", t.Name(), e.cfg.SyncScript, e.cfg.Clients, e.cfg.Jobs, e.cfg.LagDuration, r.ApplicationName, e.store.RTT())
	run, err := e.pgbenchLogged(ctx, pg, e.cfg.SyncScript, e.cfg.LagDuration, t.TempDir())
	if err != nil {
		return r, err
	}
	r.TPS, r.Latency, r.CommitAvgSeconds = run.tps, run.latency, run.commitAvg
	if sc != nil {
		after, err := readUploadCounters(sc)
		if err != nil {
			return r, err
		}
		cpuAfter, err := procCPUSeconds(pid)
		if err != nil {
			return r, err
		}
		segSize, err := walSegmentSize(ctx, pg)
		if err != nil {
			return r, err
		}
		u := after.sub(before)
		u.SegmentBytes = float64(segSize)
		r.Uploads = &u
		r.SidecarCPU = (cpuAfter - cpuBefore) / u.Seconds
		// What one part costs on this store, beside what pg_receivewal pays per flush.
		if u.Parts > 0 {
			size := max(int64(u.partRawBytes()/u.Parts), 1)
			if r.OnePutSeconds, err = e.probeUpload(ctx, url, size); err != nil {
				return r, err
			}
			if archiveDir != "" {
				if r.AppendFsyncSeconds, err = probeAppendFsync(archiveDir, size); err != nil {
					return r, err
				}
			}
		}
	}

	// Step 5: the standby must still be the synchronous one: a run that fell back to
	// asynchronous commits would measure nothing.
	if r.ApplicationName != "" {
		state, err := pg.QueryString(ctx, "SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = '"+r.ApplicationName+"'), 'gone')")
		if err != nil {
			return r, err
		}
		if state != "sync" {
			return r, fmt.Errorf("%s: after the load its sync_state in pg_stat_replication is %q, expected sync", r.ApplicationName, state)
		}
	}
	progress("%s: %.0f tps, latency p50 %s p99 %s max %s, commit avg %s (%d transactions, %d failed)%s", t.Name(), r.TPS,
		fmtMs(r.Latency.P50), fmtMs(r.Latency.P99), fmtMs(r.Latency.Max), fmtMs(r.CommitAvgSeconds), r.Latency.Transactions, r.Latency.Failed, uploadsProgress(r.Uploads))
	return r, nil
}

// uploadsProgress describes what the sidecar uploaded, for a progress line.
func uploadsProgress(u *uploadCounters) string {
	if u == nil {
		return ""
	}
	return fmt.Sprintf("; %.0f parts + %.0f segments uploaded, %.1f PUTs/s", u.Parts, u.Segments, u.putsPerSecond())
}

// probeAppendFsync returns the median time of appending size bytes to an open file in dir
// and fsyncing it, over 20 appends.
func probeAppendFsync(dir string, size int64) (float64, error) {
	f, err := os.OpenFile(filepath.Join(dir, "bench-probe-append"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("probe append+fsync: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	data := make([]byte, size)
	var took []float64
	for range 20 {
		began := time.Now()
		if _, err := f.Write(data); err != nil {
			return 0, fmt.Errorf("probe append+fsync: %w", err)
		}
		if err := f.Sync(); err != nil {
			return 0, fmt.Errorf("probe append+fsync: %w", err)
		}
		took = append(took, time.Since(began).Seconds())
	}
	return *percentile(took, 0.5), nil
}

// makeSynchronous sets synchronous_standby_names to app (synchronous_commit stays on, its
// default) and waits until pg_stat_replication shows app as the synchronous standby.
func makeSynchronous(ctx context.Context, pg *harness.Postgres, app string) error {
	if sc, err := pg.QueryString(ctx, "SHOW synchronous_commit"); err != nil {
		return err
	} else if sc != "on" {
		return fmt.Errorf("synchronous_commit is %q, expected on", sc)
	}
	if err := pg.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '"+app+"'"); err != nil {
		return err
	}
	if err := pg.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	state := ""
	for time.Now().Before(deadline) {
		var err error
		state, err = pg.QueryString(ctx, "SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = '"+app+"'), 'not connected')")
		if err != nil {
			return err
		}
		if state == "sync" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s is not the synchronous standby 30s after setting synchronous_standby_names: sync_state %q", app, state)
}

// pgbenchRun is what pgbenchLogged measured.
type pgbenchRun struct {
	tps       float64
	latency   latencyStats
	commitAvg *float64
}

// endLatencyPattern finds pgbench -r's average latency (ms) of the script's END; line;
// since PostgreSQL 15 a failure count sits between the two.
var endLatencyPattern = regexp.MustCompile(`(?m)^\s*([0-9.]+)\s+(?:[0-9]+\s+)?END;\s*$`)

// pgbenchLogged runs the built-in script for d with per-statement latencies (-r) and a
// per-transaction log in dir (--log), and returns TPS and latencies.
func (e *env) pgbenchLogged(ctx context.Context, pg *harness.Postgres, script string, d time.Duration, dir string) (pgbenchRun, error) {
	var run pgbenchRun
	secs := strconv.Itoa(int(d.Round(time.Second) / time.Second))
	prefix := filepath.Join(dir, "tx")
	out, err := pg.Pgbench(ctx, "-b", script, "-c", strconv.Itoa(e.cfg.Clients), "-j", strconv.Itoa(e.cfg.Jobs), "-T", secs, "-r", "--log", "--log-prefix", prefix)
	if err != nil {
		return run, err
	}
	m := tpsPattern.FindStringSubmatch(out)
	if m == nil {
		return run, fmt.Errorf("pgbench printed no TPS:\n%s", out)
	}
	if run.tps, err = strconv.ParseFloat(m[1], 64); err != nil {
		return run, fmt.Errorf("pgbench TPS %q: %w", m[1], err)
	}
	if m := endLatencyPattern.FindStringSubmatch(out); m != nil {
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return run, fmt.Errorf("pgbench END; latency %q: %w", m[1], err)
		}
		v := ms / 1000
		run.commitAvg = &v
	}
	logs, err := filepath.Glob(prefix + ".*")
	if err != nil || len(logs) == 0 {
		return run, fmt.Errorf("pgbench --log wrote no %s.* files (%v)", prefix, err)
	}
	var lat []float64
	failed := 0
	for _, p := range logs {
		f, err := os.Open(p)
		if err != nil {
			return run, err
		}
		l, n, err := parseTransactionLog(f)
		f.Close()
		if err != nil {
			return run, fmt.Errorf("%s: %w", p, err)
		}
		lat, failed = append(lat, l...), failed+n
	}
	run.latency = summarise(lat, failed)
	return run, nil
}

// parseTransactionLog reads a pgbench --log file ("client_id transaction_no time
// script_no time_epoch time_us ...", time in microseconds, or "failed"/"skipped") and
// returns the latencies in seconds and how many transactions had none.
func parseTransactionLog(r io.Reader) ([]float64, int, error) {
	var lat []float64
	failed := 0
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			return nil, 0, fmt.Errorf("line %d %q: expected at least 6 fields (client_id transaction_no time script_no time_epoch time_us)", line, sc.Text())
		}
		us, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			if f[2] == "failed" || f[2] == "skipped" {
				failed++
				continue
			}
			return nil, 0, fmt.Errorf("line %d: time %q: expected microseconds, failed or skipped", line, f[2])
		}
		lat = append(lat, us/1e6)
	}
	return lat, failed, sc.Err()
}

// summarise computes the latency figures.
func summarise(lat []float64, failed int) latencyStats {
	s := latencyStats{Transactions: len(lat), Failed: failed}
	if len(lat) == 0 {
		return s
	}
	sum := 0.0
	for _, v := range lat {
		sum += v
	}
	avg := sum / float64(len(lat))
	s.Avg = &avg
	s.P50, s.P99, s.Max = percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)
	return s
}

// asyncPhase runs kcbackup in asynchronous mode at its default --partial-interval and at
// AsyncFastInterval, measuring the archive lag and what went up for the WAL received.
func (e *env) asyncPhase(t *benchTB, res *Results) error {
	var failed []string
	for _, interval := range []time.Duration{-1, e.cfg.AsyncFastInterval} {
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		r, err := e.lagSub(lagSpec{method: methodKcbackup, interval: interval}, res)
		if err != nil {
			failed = append(failed, err.Error())
			continue
		}
		r.DefaultInterval = interval < 0
		res.Async = append(res.Async, r)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return nil
}

// helpDefaultInterval finds the default of --partial-interval in `kcbackup run --help`.
var helpDefaultInterval = regexp.MustCompile(`--partial-interval duration[^\n]*\(default ([0-9a-zµ.]+)\)`)

// kcbackupDefaultInterval reads kcbackup run's default --partial-interval from its --help.
func (e *env) kcbackupDefaultInterval(ctx context.Context) (time.Duration, error) {
	out, err := e.kcbackup(ctx, nil, "run", "--help")
	if err != nil {
		return 0, err
	}
	m := helpDefaultInterval.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("kcbackup run --help names no default for --partial-interval")
	}
	return time.ParseDuration(m[1])
}

// intervalName names a --partial-interval as the runs used it.
func (e *env) intervalName(d time.Duration) string {
	if d < 0 {
		return e.defaultInterval.String() + " (default)"
	}
	return d.String()
}
