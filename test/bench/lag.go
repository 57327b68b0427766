package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// Archive methods of the lag runs. methodNone is the baseline without any archiving, for
// the TPS comparison.
const (
	methodNone        = "no archiving"
	methodKcbackup    = "kcbackup run"
	methodKcbackupRTT = "kcbackup run, slow store"
	methodReceive     = "pg_receivewal"
	methodReceiveSync = "pg_receivewal --synchronous"
	methodArchiveCmd  = "archive_command cp"
)

// sampleInterval is how often the server position is sampled, and durableInterval how
// often the durable position is: finer, so that the reading of a lag is late by at most
// durableInterval (plus one query), not by a whole sampleInterval.
const (
	sampleInterval  = 100 * time.Millisecond
	durableInterval = 20 * time.Millisecond
)

// lagSpec is one lag run: the method and, for kcbackup, its --partial-interval.
type lagSpec struct {
	method string
	// interval is kcbackup's --partial-interval; negative leaves kcbackup's default.
	interval time.Duration
	// resources measures the sidecar's memory and CPU and the archive's stored bytes
	// (the lag phase's kcbackup run).
	resources bool
}

// lsnSample is the server's WAL position and the time it was read.
type lsnSample struct {
	at  time.Time
	lsn walarchive.LSN
}

// durableFunc reads a method's "durable in archive" position.
type durableFunc func(ctx context.Context, conn *pgconn.PgConn) (walarchive.LSN, error)

// lagPhase runs pgbench for LagDuration against each method in turn, each on its own fresh
// cluster, and measures the archive lag, the TPS and the sidecar's resource use.
func (e *env) lagPhase(t *benchTB, res *Results) error {
	var failed []string
	methods := []string{methodNone, methodKcbackup, methodReceive, methodReceiveSync, methodArchiveCmd}
	if e.cfg.LagSlowRTT > 0 {
		methods = append(methods, methodKcbackupRTT)
	}
	for _, method := range methods {
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		spec := lagSpec{method: method, interval: e.cfg.PartialInterval, resources: method == methodKcbackup}
		r, err := e.lagSub(spec, res)
		if err != nil {
			failed = append(failed, err.Error())
			continue
		}
		res.Lag = append(res.Lag, r)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return nil
}

// lagSub runs one lag run in its own sub-phase, whose cleanups run when it ends.
func (e *env) lagSub(spec lagSpec, res *Results) (LagResult, error) {
	name := "lag/" + spec.method
	if spec.method == methodKcbackup || spec.method == methodKcbackupRTT {
		name += ", --partial-interval " + e.intervalName(spec.interval)
	}
	return runSub(e.ctx, name, func(t *benchTB) (LagResult, error) { return e.lagRun(t, spec, res) })
}

// runSub runs fn in its own sub-phase named name, whose cleanups run when it ends, turning
// a Fatal of the harness into an error.
func runSub[T any](ctx context.Context, name string, fn func(t *benchTB) (T, error)) (T, error) {
	sub := newBenchTB(ctx, name)
	var r T
	err := guard(name, func() error {
		var err error
		r, err = fn(sub)
		return err
	})
	sub.runCleanups()
	if err != nil {
		progress("%v", err)
	}
	return r, err
}

// lagRun measures one method. The lag of a sample (t, lsn) of pg_current_wal_lsn() is
// the first later time the method's durable position was seen at or past lsn, minus t.
func (e *env) lagRun(t *benchTB, spec lagSpec, res *Results) (LagResult, error) {
	ctx := e.ctx
	method := spec.method
	r := LagResult{Method: method}

	// Step 1: a fresh cluster; archive_command needs its settings from the start.
	settings := map[string]string{}
	var archiveDir string
	if method == methodArchiveCmd {
		archiveDir = serverDir(t, "archive")
		settings["archive_mode"] = "on"
		settings["archive_command"] = "cp %p " + archiveDir + "/%f"
		settings["archive_timeout"] = strconv.Itoa(int(e.cfg.ArchiveTimeout / time.Second))
	}
	pg := e.startCluster(t, e.cfg.LagScale, settings)
	segSize, err := walSegmentSize(ctx, pg)
	if err != nil {
		return r, err
	}

	// Step 2: start the method and define its durable position.
	var durable durableFunc
	var sc *harness.Sidecar
	var url string
	var firstLSN walarchive.LSN
	kc := method == methodKcbackup || method == methodKcbackupRTT
	switch method {
	case methodKcbackup, methodKcbackupRTT:
		url = e.newArchive(t, "lag")
		if firstLSN, err = currentLSN(ctx, pg); err != nil {
			return r, err
		}
		sc = e.startSidecarInterval(t, pg, url, spec.interval)
		r.PartialInterval = e.intervalName(spec.interval)
		cur, err := currentLSN(ctx, pg)
		if err != nil {
			return r, err
		}
		if _, err := waitArchived(ctx, sc, cur, time.Minute); err != nil {
			return r, err
		}
		durable = func(ctx context.Context, _ *pgconn.PgConn) (walarchive.LSN, error) { return archivedLSN(ctx, sc) }
	case methodReceive, methodReceiveSync:
		if err := startReceiveWAL(t, pg, method == methodReceiveSync); err != nil {
			return r, err
		}
		durable = func(ctx context.Context, conn *pgconn.PgConn) (walarchive.LSN, error) {
			return queryLSN(ctx, conn, "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'pg_receivewal'")
		}
	case methodArchiveCmd:
		durable = func(ctx context.Context, conn *pgconn.PgConn) (walarchive.LSN, error) {
			name, err := queryText(ctx, conn, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
			if err != nil {
				return 0, err
			}
			return segmentEnd(name, segSize), nil
		}
	}

	// Step 3: load and sample; after the load, watch the durable position drain.
	var cpuBefore float64
	var pid int
	if sc != nil {
		if pid, err = childPID(strings.TrimPrefix(sc.URL(), "http://")); err != nil {
			return r, err
		}
		if cpuBefore, err = procCPUSeconds(pid); err != nil {
			return r, err
		}
	}
	if method == methodKcbackupRTT {
		r.RTTSeconds = e.cfg.LagSlowRTT.Seconds()
		e.store.SetRTT(e.cfg.LagSlowRTT)
		defer e.store.SetRTT(0)
	}
	var before uploadCounters
	if kc {
		if before, err = readUploadCounters(sc); err != nil {
			return r, err
		}
	}
	progress("%s: pgbench -c %d -j %d -T %s, store round trip %s", t.Name(), e.cfg.Clients, e.cfg.Jobs, e.cfg.LagDuration, e.store.RTT())
	s, err := newSampler(ctx, pg, durable)
	if err != nil {
		return r, err
	}
	defer s.close()
	go s.run()
	loadStart := time.Now()
	tps, err := e.pgbench(ctx, pg, e.cfg.LagDuration)
	s.stopLoad()
	if err != nil {
		s.stop()
		return r, err
	}
	r.TPS = tps
	if durable != nil {
		progress("%s: load done (%.0f tps); waiting up to %s for the archive to catch up", t.Name(), tps, e.cfg.DrainWindow)
		s.waitDrained(e.cfg.DrainWindow)
	}
	s.stop()
	if s.err != nil {
		return r, fmt.Errorf("sample positions: %w", s.err)
	}
	r.Samples = len(s.lsns)
	if len(s.lsns) > 0 {
		r.WALBytes = int64(s.lsns[len(s.lsns)-1].lsn - s.lsns[0].lsn)
	}
	if durable != nil {
		lags, unresolved := computeLags(s.lsns, s.durables)
		r.Unresolved = unresolved
		r.P50, r.P99, r.Max = percentile(lags, 0.50), percentile(lags, 0.99), percentile(lags, 1)
		progress("%s: lag p50 %s p99 %s max %s (%d samples, %d unresolved)", t.Name(), fmtSec(r.P50), fmtSec(r.P99), fmtSec(r.Max), r.Samples, unresolved)
		if kc {
			within, across := splitAtSegmentEnds(s.lsns, s.durables, lags, segSize)
			r.WithinSegment, r.AcrossSegmentEnd = lagSplit(within), lagSplit(across)
			progress("%s: lag p99 %s over %d samples within the durable position's segment, %s over %d across a segment end", t.Name(),
				fmtSec(r.WithinSegment.P99), r.WithinSegment.Samples, fmtSec(r.AcrossSegmentEnd.P99), r.AcrossSegmentEnd.Samples)
		}
	}

	// Step 4: what the sidecar uploaded for the WAL it received, and how long one upload
	// of the average size takes on this store.
	if kc {
		after, err := readUploadCounters(sc)
		if err != nil {
			return r, err
		}
		r.Uploads = after.sub(before)
		r.Uploads.SegmentBytes = float64(segSize)
		if r.Uploads.Objects > 0 {
			avg := int64(r.Uploads.StoredBytes / r.Uploads.Objects)
			secs, err := e.probeUpload(ctx, url, avg)
			if err != nil {
				return r, err
			}
			r.Uploads.OneUploadSeconds = secs
		}
		progress("%s: uploaded %.0f MiB raw, %.0f MiB stored in %.0f objects for %.0f MiB of WAL; one upload of the average size takes %.0f ms",
			t.Name(), r.Uploads.RawBytes/(1<<20), r.Uploads.StoredBytes/(1<<20), r.Uploads.Objects, r.Uploads.WALBytes/(1<<20), r.Uploads.OneUploadSeconds*1000)
	}

	// Step 5: the sidecar's resources and the archive's stored bytes.
	if sc != nil && spec.resources {
		cpuAfter, err := procCPUSeconds(pid)
		if err != nil {
			return r, err
		}
		rss, err := procPeakRSS(pid)
		if err != nil {
			return r, err
		}
		res.Sidecar = &SidecarUsage{PeakRSSBytes: rss, CPUSeconds: cpuAfter - cpuBefore, WallSeconds: time.Since(loadStart).Seconds()}
		last, err := archivedLSN(ctx, sc)
		if err != nil {
			return r, err
		}
		if err := sc.Stop(30 * time.Second); err != nil {
			return r, fmt.Errorf("stop the sidecar: %w", err)
		}
		ratio, err := storedRatio(ctx, "lag run (pgbench)", url, int64(last-firstLSN))
		if err != nil {
			return r, err
		}
		res.Storage = append(res.Storage, ratio)
	}
	return r, nil
}

// uploadCounters are the sidecar's upload metrics at one moment (or, from sub, over a run).
type uploadCounters struct {
	// At is when the counters were read (from sub: Seconds is the time between the reads).
	At          time.Time `json:"-"`
	Seconds     float64   `json:"seconds"`
	WALBytes    float64   `json:"walBytes"`
	RawBytes    float64   `json:"uploadedRawBytes"`
	StoredBytes float64   `json:"uploadedStoredBytes"`
	Objects     float64   `json:"uploads"`
	// Segments and Parts split Objects by kind: complete segments and tail parts.
	Segments float64 `json:"segmentUploads"`
	Parts    float64 `json:"partUploads"`
	// SegmentBytes is the WAL segment size: each complete segment uploads that many raw
	// bytes, so the raw bytes of the parts are RawBytes - Segments*SegmentBytes.
	SegmentBytes float64 `json:"segmentBytes"`
	// OneUploadSeconds is the median time of one PUT of the run's average stored object
	// size, from the bench to the same store.
	OneUploadSeconds float64 `json:"oneUploadSeconds"`
}

func readUploadCounters(sc *harness.Sidecar) (uploadCounters, error) {
	c := uploadCounters{At: time.Now()}
	for _, m := range []struct {
		name string
		v    *float64
	}{
		{"kcbackup_received_wal_bytes_total", &c.WALBytes},
		{`kcbackup_uploaded_bytes_total{encoding="raw"}`, &c.RawBytes},
		{`kcbackup_uploaded_bytes_total{encoding="compressed"}`, &c.StoredBytes},
	} {
		v, err := sc.Metric(m.name)
		if err != nil && !strings.Contains(err.Error(), "not found") {
			return c, err
		}
		*m.v = v
	}
	for _, m := range []struct {
		kind string
		v    *float64
	}{{"segment", &c.Segments}, {"partial", &c.Parts}} {
		v, err := sc.Metric(`kcbackup_uploads_total{kind="` + m.kind + `"}`)
		if err != nil && !strings.Contains(err.Error(), "not found") {
			return c, err
		}
		*m.v = v
	}
	c.Objects = c.Segments + c.Parts
	return c, nil
}

func (c uploadCounters) sub(o uploadCounters) uploadCounters {
	return uploadCounters{
		Seconds:  c.At.Sub(o.At).Seconds(),
		WALBytes: c.WALBytes - o.WALBytes, RawBytes: c.RawBytes - o.RawBytes, StoredBytes: c.StoredBytes - o.StoredBytes,
		Objects: c.Objects - o.Objects, Segments: c.Segments - o.Segments, Parts: c.Parts - o.Parts,
	}
}

// putsPerSecond is the objects uploaded per second between the two readings.
func (c uploadCounters) putsPerSecond() float64 {
	if c.Seconds <= 0 {
		return 0
	}
	return c.Objects / c.Seconds
}

// partRawBytes is the raw bytes uploaded as tail parts: a complete segment is always
// SegmentBytes raw, so the rest of the raw bytes went up in parts.
func (c uploadCounters) partRawBytes() float64 {
	return c.RawBytes - c.Segments*c.SegmentBytes
}

// probeUpload returns the median of five PUTs of size incompressible bytes to the archive's
// storage, through the proxy at its current round trip.
func (e *env) probeUpload(ctx context.Context, url string, size int64) (float64, error) {
	st, err := walarchive.OpenStorage(ctx, url)
	if err != nil {
		return 0, err
	}
	data := make([]byte, size)
	rand.Read(data)
	var took []float64
	for i := range 6 {
		began := time.Now()
		if _, err := walarchive.PutObject(ctx, st, fmt.Sprintf("bench-probe/%d", i), bytes.NewReader(data), walarchive.CompressionNone, nil); err != nil {
			return 0, fmt.Errorf("probe upload: %w", err)
		}
		if i > 0 { // the first one also opens the connection
			took = append(took, time.Since(began).Seconds())
		}
	}
	return *percentile(took, 0.5), nil
}

// sampler reads pg_current_wal_lsn() every sampleInterval and the durable position every
// durableInterval, over one connection. During the load it records both; afterwards only
// the durable position.
type sampler struct {
	ctx     context.Context
	conn    *pgconn.PgConn
	durable durableFunc

	mu       sync.Mutex
	loading  bool
	lsns     []lsnSample
	durables []lsnSample
	err      error

	quit chan struct{}
	done chan struct{}
}

func newSampler(ctx context.Context, pg *harness.Postgres, durable durableFunc) (*sampler, error) {
	conn, err := pgconn.Connect(ctx, pg.ConnString(harness.PGSuperuser, "postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect the sampler: %w", err)
	}
	return &sampler{ctx: ctx, conn: conn, durable: durable, loading: true, quit: make(chan struct{}), done: make(chan struct{})}, nil
}

func (s *sampler) run() {
	defer close(s.done)
	tick := time.NewTicker(durableInterval)
	defer tick.Stop()
	var lastLSN time.Time
	for {
		select {
		case <-s.quit:
			return
		case <-s.ctx.Done():
			s.setErr(s.ctx.Err())
			return
		case <-tick.C:
		}
		s.mu.Lock()
		loading := s.loading
		s.mu.Unlock()
		if loading && time.Since(lastLSN) >= sampleInterval-durableInterval/2 {
			lastLSN = time.Now()
			lsn, err := queryLSN(s.ctx, s.conn, "SELECT pg_current_wal_lsn()")
			if err != nil {
				s.setErr(err)
				return
			}
			s.mu.Lock()
			s.lsns = append(s.lsns, lsnSample{time.Now(), lsn})
			s.mu.Unlock()
		}
		if s.durable == nil {
			continue
		}
		d, err := s.durable(s.ctx, s.conn)
		if err != nil {
			continue // a missed reading only delays the next one
		}
		s.mu.Lock()
		s.durables = append(s.durables, lsnSample{time.Now(), d})
		s.mu.Unlock()
	}
}

func (s *sampler) setErr(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// stopLoad ends the recording of server positions.
func (s *sampler) stopLoad() {
	s.mu.Lock()
	s.loading = false
	s.mu.Unlock()
}

// waitDrained waits until the durable position reaches the last sampled server position,
// or window passes.
func (s *sampler) waitDrained(window time.Duration) {
	deadline := time.Now().Add(window)
	for time.Now().Before(deadline) && s.ctx.Err() == nil {
		s.mu.Lock()
		reached := len(s.lsns) > 0 && len(s.durables) > 0 && s.durables[len(s.durables)-1].lsn >= s.lsns[len(s.lsns)-1].lsn
		s.mu.Unlock()
		if reached {
			return
		}
		time.Sleep(durableInterval)
	}
}

func (s *sampler) stop() {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	<-s.done
}

func (s *sampler) close() {
	s.stop()
	s.conn.Close(context.Background())
}

// computeLags returns, for each server sample, the time until a later durable reading
// reached it; samples never reached are counted as unresolved and given +Inf.
func computeLags(lsns, durables []lsnSample) ([]float64, int) {
	lags := make([]float64, 0, len(lsns))
	unresolved := 0
	for _, s := range lsns {
		lag := math.Inf(1)
		for _, d := range durables {
			if d.at.After(s.at) && d.lsn >= s.lsn {
				lag = d.at.Sub(s.at).Seconds()
				break
			}
		}
		if math.IsInf(lag, 1) {
			unresolved++
		}
		lags = append(lags, lag)
	}
	return lags, unresolved
}

// splitAtSegmentEnds splits the lags of the server samples in two: those whose WAL ends in
// the segment the durable position was in when they were taken, and those that had to wait
// for a segment end to be archived (their WAL ends in a later segment).
func splitAtSegmentEnds(lsns, durables []lsnSample, lags []float64, segSize uint64) (within, across []float64) {
	for i, s := range lsns {
		var d walarchive.LSN
		for _, r := range durables {
			if r.at.After(s.at) {
				break
			}
			d = r.lsn
		}
		if s.lsn > 0 && uint64(s.lsn-1)/segSize > uint64(d)/segSize {
			across = append(across, lags[i])
		} else {
			within = append(within, lags[i])
		}
	}
	return within, across
}

// LagSplit is the lag of a subset of the samples.
type LagSplit struct {
	Samples int      `json:"samples"`
	P50     *float64 `json:"p50Seconds"`
	P99     *float64 `json:"p99Seconds"`
}

func lagSplit(lags []float64) LagSplit {
	return LagSplit{Samples: len(lags), P50: percentile(lags, 0.5), P99: percentile(lags, 0.99)}
}

// percentile returns the nearest-rank percentile p (0..1] of values, or nil when there are
// none or it falls on an unresolved (+Inf) value.
func percentile(values []float64, p float64) *float64 {
	if len(values) == 0 {
		return nil
	}
	v := append([]float64(nil), values...)
	sort.Float64s(v)
	i := int(math.Ceil(p*float64(len(v)))) - 1
	if i < 0 {
		i = 0
	}
	if math.IsInf(v[i], 1) {
		return nil
	}
	x := v[i]
	return &x
}

// queryText runs sql and returns the first column of the first row ("" for NULL or no row).
func queryText(ctx context.Context, conn *pgconn.PgConn, sql string) (string, error) {
	rs, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", fmt.Errorf("query %q: %w", sql, err)
	}
	if len(rs) == 0 || len(rs[0].Rows) == 0 || len(rs[0].Rows[0]) == 0 {
		return "", nil
	}
	return string(rs[0].Rows[0][0]), nil
}

// queryLSN runs sql returning an LSN; NULL or no row is 0.
func queryLSN(ctx context.Context, conn *pgconn.PgConn, sql string) (walarchive.LSN, error) {
	s, err := queryText(ctx, conn, sql)
	if err != nil || s == "" {
		return 0, err
	}
	return walarchive.ParseLSN(s)
}

// walSegmentSize returns the cluster's WAL segment size in bytes.
func walSegmentSize(ctx context.Context, pg *harness.Postgres) (uint64, error) {
	s, err := pg.QueryString(ctx, "SELECT pg_size_bytes(current_setting('wal_segment_size'))")
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 10, 64)
}

// segmentEnd returns the end position of the WAL segment file name, or 0 for anything that
// is not a plain segment name (a history or backup history file).
func segmentEnd(name string, segSize uint64) walarchive.LSN {
	if len(name) != 24 {
		return 0
	}
	log, err1 := strconv.ParseUint(name[8:16], 16, 32)
	seg, err2 := strconv.ParseUint(name[16:24], 16, 32)
	if err1 != nil || err2 != nil {
		return 0
	}
	segno := log*(0x100000000/segSize) + seg
	return walarchive.LSN((segno + 1) * segSize)
}

// startReceiveWAL creates a physical slot and starts pg_receivewal on it into a local
// directory; it is stopped (SIGINT, then SIGKILL) when the run ends.
func startReceiveWAL(t *benchTB, pg *harness.Postgres, synchronous bool) error {
	dir := t.TempDir()
	conn := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port()), "-U", harness.PGSuperuser}
	if _, err := command(t.Context(), nil, pg.Bin("pg_receivewal"), append(conn, "--create-slot", "-S", "bench")...); err != nil {
		return err
	}
	args := append(conn, "-D", filepath.Join(dir, "wal"), "-S", "bench", "-n")
	if synchronous {
		args = append(args, "--synchronous")
	}
	if err := os.Mkdir(filepath.Join(dir, "wal"), 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "pg_receivewal.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(pg.Bin("pg_receivewal"), args...)
	cmd.Env = os.Environ()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start pg_receivewal: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	// Wait until the server lists it as streaming.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := pg.QueryString(t.Context(), "SELECT coalesce((SELECT state FROM pg_stat_replication WHERE application_name = 'pg_receivewal'), 'none')")
		if err == nil && st == "streaming" {
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "pg_receivewal.log"))
			return fmt.Errorf("pg_receivewal exited: %s", b)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("pg_receivewal not streaming after 30s")
}

// childPID finds the child process of this program whose command line contains match.
func childPID(match string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	me := os.Getpid()
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		fields, err := procStatFields(pid)
		if err != nil || len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid != me {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), match) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no child process with %q in its command line", match)
}

// procStatFields returns the fields of /proc/<pid>/stat after the command name: state is
// field 0, ppid field 1, utime field 11, stime field 12.
func procStatFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// userHZ is the kernel's USER_HZ, the unit of utime and stime in /proc/<pid>/stat; it is
// 100 on every Linux architecture Go supports.
const userHZ = 100

// procCPUSeconds returns utime+stime of pid, in seconds.
func procCPUSeconds(pid int) (float64, error) {
	f, err := procStatFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat has %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse utime/stime of %d", pid)
	}
	return (u + s) / userHZ, nil
}

// procPeakRSS returns VmHWM of pid in bytes.
func procPeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// storedRatio sums the objects under wal/ of the archive at url and divides by walBytes.
func storedRatio(ctx context.Context, what, url string, walBytes int64) (StorageRatio, error) {
	st, err := walarchive.OpenStorage(ctx, url)
	if err != nil {
		return StorageRatio{}, err
	}
	objs, err := st.List(ctx, "wal/")
	if err != nil {
		return StorageRatio{}, fmt.Errorf("list %s/wal/: %w", url, err)
	}
	r := StorageRatio{Workload: what, WALBytes: walBytes, Objects: len(objs)}
	for _, o := range objs {
		r.StoredBytes += o.Size
	}
	if walBytes > 0 {
		r.Ratio = float64(r.StoredBytes) / float64(walBytes)
	}
	return r, nil
}

// fmtSec formats an optional number of seconds.
func fmtSec(v *float64) string {
	if v == nil {
		return "unresolved"
	}
	return fmt.Sprintf("%.2fs", *v)
}
