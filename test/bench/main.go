// Command bench measures kcbackup side by side with the standard PostgreSQL tools: archive
// lag under load (against pg_receivewal and archive_command), catch-up rate, base backup
// time (against pg_basebackup), restore and replay time (against a cp restore_command),
// wal-fetch latency, stored bytes per WAL byte, pgbench TPS with and without the sidecar
// and the sidecar's memory and CPU; synchronous mode (TPS and commit latency beside
// pg_receivewal --synchronous, the store at 0 and 60 ms) and asynchronous mode (lag and
// upload bytes per WAL byte at two --partial-interval values, PUTs per second).
//
// It starts everything it needs on loopback addresses (PostgreSQL 15 clusters, MinIO, the
// kcbackup binary) through test/harness, one fresh cluster per measurement, and removes all
// of it when it ends, even on error or SIGINT. Every figure printed is measured in the run.
// It prints one table to stdout and writes results.json and results.md to -out; progress
// goes to stderr.
//
//	go run ./test/bench            # full run, about 30 minutes on 2 cores (rewrites the table in docs/performance.md)
//	go run ./test/bench -quick     # smoke run with small sizes, under 8 minutes
//	go run ./test/bench -only sync,async  # the synchronous- and asynchronous-mode rows alone
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// Config holds the sizes and durations of one benchmark run.
type Config struct {
	// LagDuration is how long pgbench runs in each archive-lag (and TPS) run.
	LagDuration time.Duration
	// LagScale is pgbench's scale factor for the lag runs.
	LagScale int
	// Clients and Jobs are pgbench's -c and -j for every load.
	Clients, Jobs int
	// PartialInterval is kcbackup run's --partial-interval; negative leaves kcbackup's
	// default.
	PartialInterval time.Duration
	// ArchiveTimeout is archive_timeout for the archive_command runs.
	ArchiveTimeout time.Duration
	// DrainWindow is how long, after the load, the lag runs keep watching the durable
	// position; samples not durable by then count as unresolved.
	DrainWindow time.Duration
	// CatchupMiB is the WAL backlog, in MiB, the catch-up run creates.
	CatchupMiB int
	// BackupScale is pgbench's scale factor for the base backup run.
	BackupScale int
	// RestoreWALMiB is how much WAL, in MiB, is generated after the base backup of the
	// restore run.
	RestoreWALMiB int
	// RestoreRTTs are the store round trips the kcbackup restores run at.
	RestoreRTTs []time.Duration
	// LagSlowRTT is the store round trip of the extra kcbackup lag run (0: none).
	LagSlowRTT time.Duration
	// SyncRTT is the store round trip of the slow-store synchronous run (0: none).
	SyncRTT time.Duration
	// SyncScript is the pgbench built-in script of the synchronous-mode runs.
	SyncScript string
	// AsyncFastInterval is the --partial-interval the asynchronous runs try beside
	// kcbackup's default.
	AsyncFastInterval time.Duration
	// CatchupRTT is the store round trip of the catch-up drain.
	CatchupRTT time.Duration
	// WALFetchSegments is how many segments the wal-fetch runs fetch.
	WALFetchSegments int
	// WALFetchGap is a pause between wal-fetch calls, standing in for replay time.
	WALFetchGap time.Duration
	// OutDir receives results.json and results.md.
	OutDir string
	// Readme, when set, is the page (docs/performance.md) whose generated table the run replaces.
	Readme string
	// Only lists the phases to run; empty means all.
	Only []string
}

// phaseNames are the measurements in the order they run.
var phaseNames = []string{"lag", "sync", "async", "catchup", "walfetch", "basebackup", "restore"}

// Validate checks the configuration's bounds.
func (c Config) Validate() error {
	switch {
	case c.LagDuration < 5*time.Second:
		return fmt.Errorf("-lag-duration %s: expected at least 5s", c.LagDuration)
	case c.LagScale < 1 || c.BackupScale < 1:
		return errors.New("-lag-scale and -backup-scale must be at least 1")
	case c.Clients < 1 || c.Jobs < 1 || c.Jobs > c.Clients:
		return fmt.Errorf("-clients %d -jobs %d: expected 1 <= jobs <= clients", c.Clients, c.Jobs)
	case c.ArchiveTimeout < time.Second || c.DrainWindow < time.Second:
		return errors.New("-archive-timeout and -drain-window must be at least 1s")
	case c.CatchupMiB < 64 || c.RestoreWALMiB < 64:
		return errors.New("-catchup-mib and -restore-wal-mib must be at least 64")
	case len(c.RestoreRTTs) == 0:
		return errors.New("-restore-rtts needs at least one round trip")
	case c.SyncRTT < 0 || c.SyncRTT > 10*time.Second:
		return fmt.Errorf("-sync-rtt %s: expected 0 (no slow-store run) up to 10s", c.SyncRTT)
	case c.SyncScript != "simple-update" && c.SyncScript != "tpcb-like":
		return fmt.Errorf("-sync-script %q: expected simple-update or tpcb-like", c.SyncScript)
	case c.AsyncFastInterval <= 0 || c.AsyncFastInterval > time.Hour:
		return fmt.Errorf("-async-interval %s: expected more than 0 up to 1h", c.AsyncFastInterval)
	case c.WALFetchSegments < 2:
		return errors.New("-walfetch-segments must be at least 2")
	case c.OutDir == "":
		return errors.New("-out is required")
	}
	for _, p := range c.Only {
		if !slices.Contains(phaseNames, p) {
			return fmt.Errorf("-only %q: expected a comma-separated list of %s", p, strings.Join(phaseNames, ", "))
		}
	}
	if c.runs("walfetch") && !c.runs("catchup") {
		return errors.New("-only walfetch needs catchup too: wal-fetch reads the catch-up archive")
	}
	return nil
}

// partialIntervalName is --partial-interval as the run used it.
func (c Config) partialIntervalName() string {
	if c.PartialInterval < 0 {
		return "kcbackup's default"
	}
	return c.PartialInterval.String()
}

// runs reports whether the phase is selected.
func (c Config) runs(phase string) bool { return len(c.Only) == 0 || slices.Contains(c.Only, phase) }

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = Run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseFlags builds the Config; -quick changes the defaults of the flags not given.
func parseFlags(args []string) (Config, error) {
	var c Config
	var only, rtts, readme string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "smoke run with small sizes (a few minutes); explicit flags still win")
	fs.DurationVar(&c.LagDuration, "lag-duration", 60*time.Second, "pgbench duration of each lag and TPS run")
	fs.IntVar(&c.LagScale, "lag-scale", 20, "pgbench scale of the lag runs")
	fs.IntVar(&c.Clients, "clients", 4, "pgbench -c")
	fs.IntVar(&c.Jobs, "jobs", 2, "pgbench -j")
	fs.DurationVar(&c.PartialInterval, "partial-interval", -1, "kcbackup run --partial-interval (default: kcbackup's own)")
	fs.DurationVar(&c.ArchiveTimeout, "archive-timeout", 60*time.Second, "archive_timeout of the archive_command runs")
	fs.DurationVar(&c.DrainWindow, "drain-window", 0, "how long to watch the durable position after the load (default archive-timeout + 10s)")
	fs.IntVar(&c.CatchupMiB, "catchup-mib", 2048, "WAL backlog of the catch-up run, MiB")
	fs.IntVar(&c.BackupScale, "backup-scale", 100, "pgbench scale of the base backup run")
	fs.IntVar(&c.RestoreWALMiB, "restore-wal-mib", 1024, "WAL generated after the base backup of the restore run, MiB")
	fs.IntVar(&c.WALFetchSegments, "walfetch-segments", 200, "segments fetched in each wal-fetch run (at most what the catch-up archive holds)")
	fs.DurationVar(&c.WALFetchGap, "walfetch-gap", 100*time.Millisecond, "pause between wal-fetch calls, standing in for PostgreSQL replaying a segment")
	fs.StringVar(&rtts, "restore-rtts", "0s,20ms,60ms", "comma-separated store round trips (added by a proxy in front of MinIO) the kcbackup restores run at")
	fs.DurationVar(&c.LagSlowRTT, "lag-slow-rtt", 60*time.Millisecond, "store round trip of an extra kcbackup lag run (0: none)")
	fs.DurationVar(&c.SyncRTT, "sync-rtt", 60*time.Millisecond, "store round trip of the extra synchronous-mode run on MinIO (0: none)")
	fs.StringVar(&c.SyncScript, "sync-script", "simple-update", "pgbench built-in script of the synchronous-mode runs: simple-update (no hot rows: a transaction's latency is its own commit's wait) or tpcb-like (every transaction updates one of -lag-scale branch rows, so it also waits for the commits of others holding that row)")
	fs.DurationVar(&c.AsyncFastInterval, "async-interval", 100*time.Millisecond, "--partial-interval of the asynchronous-mode run beside kcbackup's default")
	fs.DurationVar(&c.CatchupRTT, "catchup-rtt", 60*time.Millisecond, "store round trip of the catch-up drain")
	fs.StringVar(&c.OutDir, "out", filepath.Join(harness.RepoRoot(), "test", "bench", "out"), "directory for results.json and results.md")
	fs.StringVar(&readme, "readme", "auto", "page whose bench table to replace with this run's (auto: the repository's docs/performance.md after a full run, none after -quick or -only; none: never)")
	fs.StringVar(&only, "only", "", "comma-separated phases to run: "+strings.Join(phaseNames, ","))
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		quickDefaults := map[string]func(){
			"lag-duration":      func() { c.LagDuration = 10 * time.Second },
			"lag-scale":         func() { c.LagScale = 5 },
			"drain-window":      func() { c.DrainWindow = 10 * time.Second },
			"restore-rtts":      func() { rtts = "60ms" },
			"catchup-mib":       func() { c.CatchupMiB = 384 },
			"backup-scale":      func() { c.BackupScale = 10 },
			"restore-wal-mib":   func() { c.RestoreWALMiB = 192 },
			"walfetch-segments": func() { c.WALFetchSegments = 30 },
		}
		for name, apply := range quickDefaults {
			if !set[name] {
				apply()
			}
		}
	}
	if c.DrainWindow == 0 {
		c.DrainWindow = c.ArchiveTimeout + 10*time.Second
	}
	if only != "" {
		c.Only = strings.Split(only, ",")
	}
	switch readme {
	case "auto":
		if !*quick && only == "" {
			c.Readme = filepath.Join(harness.RepoRoot(), "docs", "performance.md")
		}
	case "none", "":
	default:
		c.Readme = readme
	}
	for _, r := range strings.Split(rtts, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(r))
		if err != nil || d < 0 || d > 10*time.Second {
			return c, fmt.Errorf("-restore-rtts %q: expected durations from 0s to 10s, such as 0s,20ms,60ms", rtts)
		}
		c.RestoreRTTs = append(c.RestoreRTTs, d)
	}
	return c, c.Validate()
}

// Run runs the selected phases one after another, each on fresh clusters, then prints
// and writes the results. A failed phase is reported and the others still run; the error
// returned then names every failure.
func Run(ctx context.Context, cfg Config) error {
	// Step 1: the components shared by every phase: the kcbackup binary and MinIO.
	root := newBenchTB(ctx, "setup")
	defer root.runCleanups()
	started := time.Now()
	res := &Results{StartedAt: started.UTC(), Config: cfg, Machine: machine()}
	var e *env
	if err := guard("setup", func() error {
		var err error
		e, err = newEnv(ctx, root, cfg)
		return err
	}); err != nil {
		return err
	}

	// Step 2: the phases, sequentially, never two clusters under load at once.
	phases := []struct {
		name string
		run  func(t *benchTB) error
	}{
		{"lag", func(t *benchTB) error { return e.lagPhase(t, res) }},
		{"sync", func(t *benchTB) error { return e.syncPhase(t, res) }},
		{"async", func(t *benchTB) error { return e.asyncPhase(t, res) }},
		{"catchup", func(t *benchTB) error { return e.catchupPhase(t, res) }},
		{"walfetch", func(t *benchTB) error { return e.walFetchPhase(t, res) }},
		{"basebackup", func(t *benchTB) error { return e.baseBackupPhase(t, res) }},
		{"restore", func(t *benchTB) error { return e.restorePhase(t, res) }},
	}
	var errs []error
	for _, p := range phases {
		if !cfg.runs(p.name) {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, ctx.Err()))
			break
		}
		progress("=== phase %s", p.name)
		t := newBenchTB(ctx, p.name)
		phaseStart := time.Now()
		err := guard(p.name, func() error { return p.run(t) })
		t.runCleanups()
		if err != nil {
			progress("phase %s failed: %v", p.name, err)
			res.Errors = append(res.Errors, p.name+": "+err.Error())
			errs = append(errs, err)
		}
		progress("=== phase %s done in %s", p.name, time.Since(phaseStart).Round(time.Second))
	}
	res.Duration = time.Since(started).Round(time.Second).String()

	// Step 3: the table on stdout, JSON and Markdown in the output directory.
	table := buildTable(res)
	fmt.Print(table.text())
	if err := writeResults(cfg.OutDir, res, table); err != nil {
		errs = append(errs, err)
	}
	if cfg.Readme != "" {
		if err := updateReadme(cfg.Readme, table); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// progress prints a timestamped line to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// MarshalJSON writes the durations in Go's readable form ("1m0s") rather than nanoseconds.
func (c Config) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{
		"lagDuration":      c.LagDuration.String(),
		"lagScale":         c.LagScale,
		"clients":          c.Clients,
		"jobs":             c.Jobs,
		"partialInterval":  c.partialIntervalName(),
		"archiveTimeout":   c.ArchiveTimeout.String(),
		"drainWindow":      c.DrainWindow.String(),
		"catchupMiB":       c.CatchupMiB,
		"backupScale":      c.BackupScale,
		"restoreWALMiB":    c.RestoreWALMiB,
		"walFetchSegments": c.WALFetchSegments,
		"walFetchGap":      c.WALFetchGap.String(),
		"restoreRTTs":      fmt.Sprint(c.RestoreRTTs),
		"catchupRTT":       c.CatchupRTT.String(),
		"lagSlowRTT":       c.LagSlowRTT.String(),
		"syncRTT":          c.SyncRTT.String(),
		"asyncInterval":    c.AsyncFastInterval.String(),
		"syncScript":       c.SyncScript,
		"only":             c.Only,
	})
}
