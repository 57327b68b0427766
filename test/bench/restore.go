package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// recoveryTimeout bounds one restore's replay.
const recoveryTimeout = 30 * time.Minute

// restorePhase times restore and replay to the end of the archive of at least RestoreWALMiB
// of WAL written after the base backups: kcbackup restore (prefetch 8, then 0) from MinIO
// at each of RestoreRTTs (the round trip the proxy adds), and a pg_basebackup copy recovered with restore_command = 'cp ARCHIVE/%f %p' from the
// archive_command archive on local disk. Each restored cluster is started with
// archive_mode=off, so none adds to the archives the next one reads.
func (e *env) restorePhase(t *benchTB, res *Results) error {
	ctx := e.ctx
	// Step 1: a cluster archived both ways, and a base backup of each kind.
	archiveDir := serverDir(t, "archive")
	pg := e.startCluster(t, 10, map[string]string{
		"archive_mode":    "on",
		"archive_command": "cp %p " + archiveDir + "/%f",
		"archive_timeout": strconv.Itoa(int(e.cfg.ArchiveTimeout / time.Second)),
	})
	url := e.newArchive(t, "restore")
	sc := e.startSidecar(t, pg, url)
	cur, err := currentLSN(ctx, pg)
	if err != nil {
		return err
	}
	if _, err := waitArchived(ctx, sc, cur, time.Minute); err != nil {
		return err
	}
	if _, _, err := e.takeBackup(ctx, pg, url); err != nil {
		return err
	}
	work := t.TempDir()
	baseCopy := filepath.Join(work, "basebackup")
	if _, err := command(ctx, nil, pg.Bin("pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port()),
		"-U", harness.PGSuperuser, "-D", baseCopy, "-Fp", "-X", "none", "-c", "fast"); err != nil {
		return err
	}

	// Step 2: the WAL to replay, complete in both archives.
	start, _, err := e.generateWAL(t, pg, int64(e.cfg.RestoreWALMiB)<<20)
	if err != nil {
		return err
	}
	switchLSN, err := pg.QueryString(ctx, "SELECT pg_switch_wal()")
	if err != nil {
		return err
	}
	end, err := walarchive.ParseLSN(switchLSN)
	if err != nil {
		return err
	}
	segSize, err := walSegmentSize(ctx, pg)
	if err != nil {
		return err
	}
	if _, err := waitArchived(ctx, sc, end, 10*time.Minute); err != nil {
		return err
	}
	if err := waitArchiver(ctx, pg, end, segSize, 10*time.Minute); err != nil {
		return err
	}
	if err := sc.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("stop the sidecar: %w", err)
	}
	if err := pg.Stop(ctx, "fast"); err != nil {
		return err
	}
	r := &RestoreResult{WALBytes: int64(end - start)}

	// Step 3: the three restores, one at a time.
	// (c) cp recovery: copy the base backup into place, recovery.signal, start.
	{
		dir := filepath.Join(work, "cp")
		progress("%s: recovery from the pg_basebackup copy with restore_command cp", t.Name())
		began := time.Now()
		if _, err := command(ctx, nil, "cp", "-a", baseCopy, dir); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600); err != nil {
			return err
		}
		copied := time.Since(began)
		replay, err := e.startRestored(t, dir, map[string]string{"restore_command": "cp " + archiveDir + "/%f %p"})
		if err != nil {
			return fmt.Errorf("cp recovery: %w", err)
		}
		r.CpSeconds, r.CpCopySeconds = time.Since(began).Seconds(), copied.Seconds()
		progress("%s: cp recovery took %.1fs (copy %.1fs, start and replay %.1fs)", t.Name(), r.CpSeconds, copied.Seconds(), replay.Seconds())
		os.RemoveAll(dir)
	}
	// (k) kcbackup restore at each store round trip, with and without prefetch.
	for _, rtt := range e.cfg.RestoreRTTs {
		run := RestoreRun{RTTSeconds: rtt.Seconds()}
		for _, c := range []struct {
			prefetch string
			secs     *float64
			restore  *float64
		}{
			{"8", &run.PrefetchSeconds, &run.PrefetchRestoreSeconds},
			{"0", &run.NoPrefetchSeconds, &run.NoPrefetchRestoreSeconds},
		} {
			dir := filepath.Join(work, "kcbackup-"+c.prefetch)
			progress("%s: kcbackup restore --to latest --prefetch %s, store round trip %s", t.Name(), c.prefetch, rtt)
			if err := e.withRTT(rtt, func() error {
				began := time.Now()
				if _, err := e.kcbackup(ctx, nil, "restore", "--storage", url, "--pgdata", dir, "--to", "latest",
					"--owner", "postgres", "--prefetch", c.prefetch); err != nil {
					return err
				}
				restored := time.Since(began)
				replay, err := e.startRestored(t, dir, nil)
				if err != nil {
					return fmt.Errorf("kcbackup restore --prefetch %s: %w", c.prefetch, err)
				}
				*c.secs, *c.restore = time.Since(began).Seconds(), restored.Seconds()
				progress("%s: kcbackup --prefetch %s at %s took %.1fs (restore %.1fs, start and replay %.1fs)", t.Name(), c.prefetch, rtt, *c.secs, restored.Seconds(), replay.Seconds())
				waitPrefetchIdle(filepath.Join(dir, "pg_wal", "kcbackup-prefetch", "*", "*.inprogress"), time.Minute)
				return nil
			}); err != nil {
				return err
			}
			os.RemoveAll(dir)
		}
		r.Runs = append(r.Runs, run)
	}
	res.Restore = r
	return nil
}

// startRestored starts PostgreSQL on a restored data directory with archiving off, waits
// for the end of recovery, stops it and returns how long start and replay took.
func (e *env) startRestored(t *benchTB, dir string, settings map[string]string) (time.Duration, error) {
	s := map[string]string{"archive_mode": "off"}
	for k, v := range settings {
		s[k] = v
	}
	began := time.Now()
	pg := harness.StartFromDataDir(t, dir, harness.PGOptions{Settings: s})
	if err := waitPromoted(e.ctx, pg, recoveryTimeout); err != nil {
		return 0, err
	}
	took := time.Since(began)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Stop(ctx, "immediate"); err != nil {
		return 0, err
	}
	return took, nil
}

// waitArchiver waits until pg_stat_archiver's last archived segment ends at or after end.
func waitArchiver(ctx context.Context, pg *harness.Postgres, end walarchive.LSN, segSize uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		name, err := pg.QueryString(ctx, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if err == nil {
			last = name
			if segmentEnd(name, segSize) >= end {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("archive_command did not archive up to %s within %s (last %q)", end, timeout, last)
}
