package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// baseBackupPhase times one base backup of a pgbench database of BackupScale with each
// tool, all with a fast checkpoint: pg_basebackup -Ft -X none (plain, then -z) to local
// disk, and kcbackup backup (zstd) to MinIO with its sidecar archiving.
func (e *env) baseBackupPhase(t *benchTB, res *Results) error {
	ctx := e.ctx
	pg := e.startCluster(t, e.cfg.BackupScale, nil)
	url := e.newArchive(t, "basebackup")
	sc := e.startSidecar(t, pg, url)
	cur, err := currentLSN(ctx, pg)
	if err != nil {
		return err
	}
	if _, err := waitArchived(ctx, sc, cur, 5*time.Minute); err != nil {
		return err
	}
	r := &BaseBackupResult{Scale: e.cfg.BackupScale}
	size, err := pg.QueryString(ctx, "SELECT sum(pg_database_size(oid)) FROM pg_database")
	if err != nil {
		return err
	}
	r.DatabaseBytes, _ = strconv.ParseInt(size, 10, 64)

	dir := t.TempDir()
	for _, c := range []struct {
		name string
		flag []string
		secs *float64
		size *int64
	}{
		{"pg_basebackup -Ft", nil, &r.PlainSeconds, &r.PlainBytes},
		{"pg_basebackup -Ft -z", []string{"-z"}, &r.GzipSeconds, &r.GzipBytes},
	} {
		out := filepath.Join(dir, "backup")
		progress("%s: %s", t.Name(), c.name)
		args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port()), "-U", harness.PGSuperuser,
			"-D", out, "-Ft", "-X", "none", "-c", "fast"}, c.flag...)
		began := time.Now()
		if _, err := command(ctx, nil, pg.Bin("pg_basebackup"), args...); err != nil {
			return err
		}
		*c.secs = time.Since(began).Seconds()
		if *c.size, err = dirSize(out); err != nil {
			return err
		}
		if err := os.RemoveAll(out); err != nil {
			return err
		}
		progress("%s: %s took %.1fs", t.Name(), c.name, *c.secs)
	}

	// kcbackup with its defaults, then the alternatives the defaults were chosen against.
	for _, flags := range [][]string{nil, {"--zstd-workers", "1"}, {"--zstd-workers", "2"}, {"--compress-on", "client"}, {"--manifest-checksums", "sha256"}} {
		progress("%s: kcbackup backup %s", t.Name(), strings.Join(flags, " "))
		rec, took, err := e.takeBackup(ctx, pg, url, flags...)
		if err != nil {
			return err
		}
		progress("%s: kcbackup backup %s took %.1fs", t.Name(), strings.Join(flags, " "), took.Seconds())
		if flags == nil {
			r.KcbackupSeconds, r.KcbackupBytes = took.Seconds(), int64(rec.StoredBytes())
			continue
		}
		r.Variants = append(r.Variants, BackupVariant{Flags: strings.Join(flags, " "), Seconds: took.Seconds(), Bytes: int64(rec.StoredBytes())})
	}
	res.BaseBackup = r
	return nil
}

// takeBackup runs `kcbackup backup --json` with extra flags and returns its record and
// wall time.
func (e *env) takeBackup(ctx context.Context, pg *harness.Postgres, url string, flags ...string) (walarchive.BackupRecord, time.Duration, error) {
	var rec walarchive.BackupRecord
	began := time.Now()
	out, err := e.kcbackup(ctx, pg.Env(), append([]string{"backup", "--storage", url, "--json"}, flags...)...)
	if err != nil {
		return rec, 0, err
	}
	took := time.Since(began)
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		return rec, 0, fmt.Errorf("decode the backup record %q: %w", out, err)
	}
	return rec, took, nil
}
