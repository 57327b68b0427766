package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// catchupPhase builds a WAL backlog while the sidecar is stopped (its slot keeps the WAL on
// the server), starts the sidecar again and measures how fast it drains the backlog to MinIO.
func (e *env) catchupPhase(t *benchTB, res *Results) error {
	ctx := e.ctx
	// Step 1: a cluster whose sidecar has archived everything so far, then stops.
	pg := e.startCluster(t, e.cfg.LagScale, nil)
	url := e.newArchive(t, "catchup")
	firstLSN, err := currentLSN(ctx, pg)
	if err != nil {
		return err
	}
	sc := e.startSidecar(t, pg, url)
	cur, err := currentLSN(ctx, pg)
	if err != nil {
		return err
	}
	if _, err := waitArchived(ctx, sc, cur, time.Minute); err != nil {
		return err
	}
	if err := sc.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("stop the sidecar: %w", err)
	}

	// Step 2: the backlog.
	start, _, err := e.generateWAL(t, pg, int64(e.cfg.CatchupMiB)<<20)
	if err != nil {
		return err
	}
	flush, err := queryFlushLSN(ctx, pg)
	if err != nil {
		return err
	}

	// Step 3: drain it, the store CatchupRTT away.
	progress("%s: starting the sidecar on a backlog of %d MiB, store round trip %s", t.Name(), int64(flush-start)>>20, e.cfg.CatchupRTT)
	var took time.Duration
	if err := e.withRTT(e.cfg.CatchupRTT, func() error {
		began := time.Now()
		if err := sc.Start(); err != nil {
			return err
		}
		if _, err := waitArchived(ctx, sc, flush, 60*time.Minute); err != nil {
			return err
		}
		took = time.Since(began)
		return nil
	}); err != nil {
		return err
	}
	backlog := int64(flush - start)
	res.Catchup = &CatchupResult{BacklogBytes: backlog, Seconds: took.Seconds(), MiBPerSecond: float64(backlog) / (1 << 20) / took.Seconds(), RTTSeconds: e.cfg.CatchupRTT.Seconds()}
	progress("%s: drained %d MiB in %s (%.1f MiB/s)", t.Name(), backlog>>20, took.Round(time.Millisecond), res.Catchup.MiBPerSecond)

	// Step 4: stored bytes per WAL byte of this archive; the wal-fetch phase reads it next.
	last, err := archivedLSN(ctx, sc)
	if err != nil {
		return err
	}
	if err := sc.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("stop the sidecar: %w", err)
	}
	ratio, err := storedRatio(ctx, "catch-up run (pgbench)", url, int64(last-firstLSN))
	if err != nil {
		return err
	}
	res.Storage = append(res.Storage, ratio)
	e.catchupURL = url
	return nil
}

// queryFlushLSN returns pg_current_wal_flush_lsn().
func queryFlushLSN(ctx context.Context, pg *harness.Postgres) (walarchive.LSN, error) {
	s, err := pg.QueryString(ctx, "SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		return 0, err
	}
	return walarchive.ParseLSN(s)
}

// walFetchPhase times `kcbackup wal-fetch` per segment from the catch-up archive: first
// without prefetch, then with --prefetch 8 (the first call starts the background
// prefetch; the later calls are measured). -walfetch-gap between calls stands in for
// PostgreSQL replaying the segment before it asks for the next one; the calls whose
// segment was already in the prefetch directory when they started are counted apart, as
// they time wal-fetch itself rather than the download it waited for.
func (e *env) walFetchPhase(t *benchTB, res *Results) error {
	ctx := e.ctx
	if e.catchupURL == "" {
		return fmt.Errorf("the wal-fetch phase reads the catch-up archive: run the catchup phase too")
	}
	url := e.catchupURL
	st, err := walarchive.OpenStorage(ctx, url)
	if err != nil {
		return err
	}
	objs, err := st.List(ctx, "wal/00000001/")
	if err != nil {
		return fmt.Errorf("list the catch-up archive: %w", err)
	}
	var names []string
	for _, o := range objs {
		name := path.Base(o.Key)
		if len(name) == 24 && !strings.Contains(name, ".") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) > e.cfg.WALFetchSegments {
		names = names[:e.cfg.WALFetchSegments]
	}
	if len(names) < 2 {
		return fmt.Errorf("the catch-up archive holds %d complete segments; need at least 2", len(names))
	}
	dir := t.TempDir()
	// fetch runs one call: `kcbackup wal-fetch` itself, or with shell set the
	// restore_command kcbackup restore writes, as PostgreSQL runs it (sh -c): the shell
	// renames a prefetched segment itself (restore.PrefetchedFastPath) and starts wal-fetch
	// only for the rest.
	fetch := func(name, pdir string, shell bool, extra ...string) (time.Duration, bool, error) {
		dest := filepath.Join(dir, name)
		ready := false
		if pdir != "" {
			_, serr := os.Stat(filepath.Join(pdir, name))
			ready = serr == nil
		}
		args := append(append([]string{"wal-fetch", "--storage", url}, extra...), name, dest)
		began := time.Now()
		if shell {
			var quoted []string
			for _, a := range append([]string{e.bin}, args...) {
				quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
			}
			line := "mv -f '" + pdir + "'/" + name + " " + dest + " 2>/dev/null || " + strings.Join(quoted, " ")
			if out, err := exec.CommandContext(ctx, "sh", "-c", line).CombinedOutput(); err != nil {
				return 0, false, fmt.Errorf("restore_command %s: %w: %s", line, err, out)
			}
		} else if _, err := e.kcbackup(ctx, nil, args...); err != nil {
			return 0, false, err
		}
		took := time.Since(began)
		if err := os.Remove(dest); err != nil {
			return 0, false, fmt.Errorf("wal-fetch %s wrote no file: %w", name, err)
		}
		time.Sleep(e.cfg.WALFetchGap)
		return took, ready, nil
	}

	// Step 1: one download per call.
	progress("%s: %d segments without prefetch", t.Name(), len(names))
	var plain []float64
	for _, n := range names {
		d, _, err := fetch(n, "", false)
		if err != nil {
			return err
		}
		plain = append(plain, d.Seconds())
	}

	// Steps 2 and 3: with prefetch, through restore_command's shell and by wal-fetch alone;
	// the first call only starts the prefetcher.
	prefetched := func(shell bool) (pre, ready []float64, err error) {
		pdir := filepath.Join(dir, fmt.Sprintf("prefetch-%v", shell))
		progress("%s: %d segments with --prefetch 8 (restore_command's shell: %v)", t.Name(), len(names), shell)
		for i, n := range names {
			d, ok, err := fetch(n, pdir, shell, "--prefetch", "8", "--prefetch-dir", pdir)
			if err != nil {
				return nil, nil, err
			}
			if i > 0 {
				pre = append(pre, d.Seconds())
				if ok {
					ready = append(ready, d.Seconds())
				}
			}
		}
		// Renamed away first, as recovery-end does, so its prefetcher stops and adds nothing.
		if err := os.Rename(pdir, pdir+".removing"); err == nil {
			os.RemoveAll(pdir + ".removing")
		}
		waitPrefetchIdle(filepath.Join(pdir, "*.inprogress"), time.Minute)
		return pre, ready, nil
	}
	pre, ready, err := prefetched(true)
	if err != nil {
		return err
	}
	alone, aloneReady, err := prefetched(false)
	if err != nil {
		return err
	}
	res.WALFetch = &WALFetchResult{
		Segments:        len(names),
		GapSeconds:      e.cfg.WALFetchGap.Seconds(),
		PlainP50:        percentile(plain, 0.5),
		PlainP99:        percentile(plain, 0.99),
		PrefetchedP50:   percentile(pre, 0.5),
		PrefetchedP99:   percentile(pre, 0.99),
		PrefetchedCalls: len(pre),
		ReadyP50:        percentile(ready, 0.5),
		ReadyP99:        percentile(ready, 0.99),
		ReadyCalls:      len(ready),
		AloneReadyP50:   percentile(aloneReady, 0.5),
		AloneReadyP99:   percentile(aloneReady, 0.99),
		AloneReadyCalls: len(aloneReady),
		AloneCalls:      len(alone),
	}
	return nil
}

// waitPrefetchIdle waits until no file matches pattern (the markers of downloads in
// progress), so no prefetch worker writes into a directory after it is removed.
func waitPrefetchIdle(pattern string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		m, _ := filepath.Glob(pattern)
		if len(m) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
