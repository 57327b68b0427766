package history

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// apply runs one step of the plan.
func (w *world) apply(s step) error {
	switch s.Op {
	case opWrite:
		return w.write(s.N)
	case opBackup:
		return w.backup()
	case opKill:
		return w.killSidecar()
	case opCrash:
		return w.crash(s.N, w.minio != nil && s.F >= 0.9)
	case opOutage:
		return w.outage(s.N)
	case opPromote:
		return w.promote(s.N)
	case opRestore:
		return w.restoreInPlace(s)
	case opPrune:
		return w.prune(s)
	case opHole:
		return w.hole()
	case opCopy:
		return w.restoredCopy(s)
	case opBoundary:
		return w.boundaries(s)
	case opPartCrash:
		return w.partCrash(s)
	}
	return fmt.Errorf("unknown operation %q", s.Op)
}

func (w *world) killSidecar() error {
	w.sc.Kill()
	if err := w.sc.Start(); err != nil {
		return err
	}
	return w.waitReady()
}

// crash stops PostgreSQL in immediate mode while rows are being written, then restarts
// it; with storeDown, MinIO is stopped first and started after the crash. In synchronous
// mode a restore to latest taken while the server is down must hold every acknowledged
// commit (with synchronous_commit = on, commits wait while the store is down).
func (w *world) crash(n int, storeDown bool) error {
	if storeDown {
		if err := w.minio.Stop(w.ctx); err != nil {
			return err
		}
	}
	wr, err := startWriter(w.ctx, w.pg, w.nextNote, 0)
	if err != nil {
		return err
	}
	if storeDown {
		w.waitStorageDown()
	}
	switch {
	case !storeDown:
		if err := wr.waitCount(n, writeTimeout); err != nil {
			wr.finish()
			return err
		}
	case w.plan.Config.Sync:
		// Commits should wait for the store; those a weaker level releases are the point.
		wr.waitCount(1, storeDownCommitWait)
	default:
		wr.waitCount(n, writeTimeout)
	}
	if err := w.pg.Stop(w.ctx, "immediate"); err != nil {
		return err
	}
	wr.finish()
	w.logf("  crashed with %d rows acknowledged, %d in flight (store down: %v)", len(wr.acked), len(wr.uncertain), storeDown)
	if storeDown {
		ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
		defer cancel()
		if err := w.minio.Start(ctx); err != nil {
			return err
		}
	}
	var syncErr error
	if w.plan.Config.Sync {
		syncErr = w.checkAckedAfterCrash(wr)
	}
	if err := w.pg.Start(w.ctx); err != nil {
		return err
	}
	if err := w.settle(wr, nil); err != nil {
		return err
	}
	return syncErr
}

// checkAckedAfterCrash is invariant (b) in synchronous mode: with the server down, a
// restore to latest holds every commit acknowledged to a client.
func (w *world) checkAckedAfterCrash(wr *writer) error {
	cat, err := w.catalog()
	if err != nil {
		return err
	}
	if !w.m.restorableLatest(cat.Backups) {
		return nil
	}
	got, code, stderr, err := w.restoreLedger("latest")
	if err != nil {
		return err
	}
	if code != 0 {
		return fail("b: synchronous commits survive a crash", "restore --to latest with the server down: exit %d: %s", code, stderr)
	}
	var lost []string
	for _, r := range w.m.live().Rows {
		if _, ok := got[r.Note]; !ok && r.Acked {
			lost = append(lost, r.Note)
		}
	}
	for _, n := range wr.acked {
		if _, ok := got[n]; !ok {
			lost = append(lost, n)
		}
	}
	if len(lost) > 0 {
		return fail("b: synchronous commits survive a crash", "restore to latest with the server down lacks %d acknowledged rows: %s", len(lost), clipList(lost))
	}
	w.logf("  synchronous: all %d acknowledged rows restored after the crash", len(wr.acked))
	return nil
}

// outage stops MinIO under load until the sidecar sees it, then starts it again.
func (w *world) outage(n int) error {
	if w.minio == nil {
		return w.write(n)
	}
	if err := w.minio.Stop(w.ctx); err != nil {
		return err
	}
	wr, err := startWriter(w.ctx, w.pg, w.nextNote, 0)
	if err != nil {
		return err
	}
	w.waitStorageDown()
	if !w.plan.Config.Sync {
		wr.waitCount(n, writeTimeout)
	}
	ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
	defer cancel()
	if err := w.minio.Start(ctx); err != nil {
		return err
	}
	werr := wr.waitCount(wr.count()+10, writeTimeout)
	wr.finish()
	w.logf("  outage: %d rows written around it", len(wr.acked))
	return w.settle(wr, werr)
}

// waitStorageDown waits, at most a minute, until the sidecar reports the store down (a quiet
// sidecar may not have touched it yet).
func (w *world) waitStorageDown() {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if st, err := w.sc.Status(w.ctx); err == nil && !st.StorageUp {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.logf("  the sidecar did not report the store down within a minute; going on with the store stopped")
}

// promote clones the primary into a standby, moves the sidecar to it, writes n rows,
// stops the primary once the standby has them and promotes the standby.
func (w *world) promote(n int) error {
	old := w.pg
	if w.plan.Config.Sync {
		// The standby's walreceiver is not the synchronous standby; the sidecar moves to it.
		if err := w.setConf(old, map[string]string{"synchronous_standby_names": "''"}); err != nil {
			return err
		}
	}
	if err := w.waitArchived(); err != nil {
		return err
	}
	if err := w.dropLeftRecoverySettings(old); err != nil {
		return err
	}
	standby := harness.StartStandby(w.t, old, harness.PGOptions{})
	if err := w.sc.Stop(time.Minute); err != nil {
		w.logf("  sidecar stop: %v", err)
	}
	if err := w.startSidecar(standby); err != nil {
		return err
	}
	if err := w.write(n); err != nil {
		return err
	}
	flush, err := w.flushLSN()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(catchUpTimeout)
	for {
		s, err := standby.QueryString(w.ctx, "SELECT pg_last_wal_replay_lsn()")
		if l, perr := walarchive.ParseLSN(s); err == nil && perr == nil && l >= flush {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the standby did not replay up to %s within %s", flush, catchUpTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := old.Stop(w.ctx, "fast"); err != nil {
		return err
	}
	born := time.Now()
	if err := standby.Promote(w.ctx); err != nil {
		return err
	}
	if w.plan.Config.Sync {
		if err := w.setConf(standby, map[string]string{"synchronous_standby_names": "'kcbackup'"}); err != nil {
			return err
		}
	}
	return w.adopt(standby, born, w.m.all(w.m.Live), "promotion")
}

// recoveryTargets are the settings that bound a recovery to one target and timeline.
var recoveryTargets = []string{"recovery_target", "recovery_target_time", "recovery_target_lsn", "recovery_target_xid",
	"recovery_target_name", "recovery_target_inclusive", "recovery_target_action", "recovery_target_timeline", "restore_command"}

// dropLeftRecoverySettings reports (as a finding) the recovery settings a restore left in
// postgresql.auto.conf of a cluster that has long been promoted: a standby cloned from it
// inherits them and cannot follow the primary's timeline ("unexpected timeline ID"), or,
// through restore_command, fetches a zero-padded partial segment from the archive and
// PANICs at promotion ("invalid magic number"). They are reset so the history goes on.
func (w *world) dropLeftRecoverySettings(pg *harness.Postgres) error {
	left, err := pg.QueryString(w.ctx, `SELECT coalesce(string_agg(name || ' = ' || setting, ', '), '') FROM pg_file_settings
		WHERE (name LIKE 'recovery_target%' OR name = 'restore_command') AND sourcefile LIKE '%postgresql.auto.conf'`)
	if err != nil || left == "" {
		return err
	}
	// The restore's recovery_end_command (kcbackup recovery-end) removes them when recovery
	// ends: any left is a finding.
	w.finding(fail("promotion: a restored cluster can be cloned into a standby", "postgresql.auto.conf of the cluster restored on timeline %d still sets %s; a standby cloned from it stops following at that timeline or PANICs at promotion on a partial segment restore_command serves (reset here to go on)", w.m.Live, left))
	for _, name := range recoveryTargets {
		if err := pg.Exec(w.ctx, "ALTER SYSTEM RESET "+name); err != nil {
			return err
		}
	}
	return nil
}

// adopt makes pg, just promoted onto a new timeline holding want, the live cluster.
func (w *world) adopt(pg *harness.Postgres, born time.Time, want map[string]time.Time, how string) error {
	tli, err := w.timeline(pg)
	if err != nil {
		return err
	}
	h, err := historyOf(w.ctx, pg, tli)
	if err != nil {
		return err
	}
	got, err := readLedger(w.ctx, pg)
	if err != nil {
		return err
	}
	parent := w.m.Live
	if len(h) > 0 {
		parent = h[len(h)-1].Parent
	}
	if _, dup := w.m.Timelines[tli]; dup || tli <= w.m.Live && how == "promotion" {
		return fail("timelines", "after %s the server is on timeline %d, which the model already has", how, tli)
	}
	w.m.fork(tli, parent, h, want, born)
	w.pg = pg
	w.logf("  %s: now on timeline %d (parent %d), %d rows", how, tli, parent, len(want))
	if d := diffRows(got, want); d != "" {
		return fail("a: restore holds exactly the rows committed by then", "after %s onto timeline %d the cluster has %s", how, tli, d)
	}
	return nil
}

// restoreInPlace restores the live cluster's data directory to a point of a reported range
// (any timeline) and keeps archiving into the same archive. One step in five whose history
// has old timelines aims at a point of an old timeline's life instead, reported or not: a
// restore that is not refused must then be exact.
func (w *world) restoreInPlace(s step) error {
	cat, err := w.catalog()
	if err != nil {
		return err
	}
	var tli uint32
	var target time.Time
	where := ""
	if dead := w.deadTimelines(); s.N%5 == 4 && len(dead) > 0 {
		tl := dead[(s.N/5)%len(dead)]
		from, to := tl.life()
		tli, target = tl.ID, pointIn(timeRange{From: from, To: to}, s.F)
		where = fmt.Sprintf("old timeline %d's life", tli)
	} else if len(cat.Ranges) > 0 {
		r := cat.Ranges[s.N%len(cat.Ranges)]
		tli, target, where = r.Timeline, pointIn(r, s.F), "range "+r.String()
	} else {
		w.logf("  no reported range: nothing to restore to")
		return nil
	}
	reported := covered(rangesOf(cat.Ranges, tli), target, target, 0)
	want := w.m.expectedAt(tli, target)
	w.logf("  in-place restore to %s on timeline %d (%s, reported %v)", target.Format(time.RFC3339Nano), tli, where, reported)
	if err := w.waitArchived(); err != nil {
		return err
	}
	born := time.Now()
	if err := w.pg.Stop(w.ctx, "fast"); err != nil {
		return err
	}
	_, stderr, code := w.kcbackup(cliTimeout, nil, "restore", "--storage", w.url, "--pgdata", w.pg.DataDir(),
		"--to", target.Format(time.RFC3339Nano), "--timeline", fmt.Sprint(tli), "--move-aside", "--owner", "postgres")
	if code != 0 {
		startErr := w.pg.Start(w.ctx) // the cluster carries on where it was
		if !reported && startErr == nil {
			w.logf("  refused (not reported): %s", lastLine(stderr))
			return nil
		}
		return fail("a: every reported time restores", "restore in place to %s on timeline %d (%s) exited %d: %s (restart: %v)",
			target.Format(time.RFC3339Nano), tli, where, code, strings.TrimSpace(stderr), startErr)
	}
	if err := w.pg.Start(w.ctx); err != nil {
		return fail("a: every reported time restores", "the restored cluster did not start: %v", err)
	}
	ctx, cancel := context.WithTimeout(w.ctx, promoteTimeout)
	defer cancel()
	if err := w.pg.WaitPromoted(ctx); err != nil {
		return fail("a: every reported time restores", "the restored cluster did not finish recovery: %v", err)
	}
	return w.adopt(w.pg, born, want, "in-place restore")
}

// pointIn returns the time at fraction f of r, at microsecond precision.
func pointIn(r timeRange, f float64) time.Time {
	d := r.To.Sub(r.From)
	return r.From.Add(time.Duration(f * float64(d))).Truncate(time.Microsecond).UTC()
}

// setConf changes server settings with ALTER SYSTEM (values as SQL literals; "" resets).
func (w *world) setConf(pg *harness.Postgres, settings map[string]string) error {
	var sql []string
	for k, v := range settings {
		if v == "" {
			sql = append(sql, "ALTER SYSTEM RESET "+k)
		} else {
			sql = append(sql, "ALTER SYSTEM SET "+k+" = "+v)
		}
	}
	sql = append(sql, "SELECT pg_reload_conf()")
	for _, q := range sql {
		if err := pg.Exec(w.ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// hole invalidates the sidecar's slot: with the sidecar stopped and the server allowed to
// keep only 1 MB for the slot, WAL is written, switched and checkpointed away.
func (w *world) hole() error {
	conf := map[string]string{"wal_keep_size": "0", "max_slot_wal_keep_size": "'1MB'"}
	if w.plan.Config.Sync {
		conf["synchronous_standby_names"] = "''"
	}
	if err := w.waitArchived(); err != nil {
		return err
	}
	if err := w.setConf(w.pg, conf); err != nil {
		return err
	}
	if err := w.sc.Stop(time.Minute); err != nil {
		w.logf("  sidecar stop: %v", err)
	}
	startLSN, err := w.flushLSN()
	if err != nil {
		return err
	}
	lost := false
	for i := 0; i < 20 && !lost; i++ {
		if err := w.write(20); err != nil {
			return err
		}
		for _, q := range []string{"INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 15000) g", "SELECT pg_switch_wal()", "CHECKPOINT"} {
			if err := w.exec(q); err != nil {
				return err
			}
		}
		st, err := w.query("SELECT coalesce(wal_status, 'none') FROM pg_replication_slots WHERE slot_name = 'kcbackup'")
		if err != nil {
			return err
		}
		lost = st == "lost"
	}
	if !lost {
		return fmt.Errorf("the slot was not invalidated after 20 rounds")
	}
	endLSN, err := w.flushLSN()
	if err != nil {
		return err
	}
	reset := map[string]string{}
	for k := range conf {
		reset[k] = ""
	}
	if err := w.setConf(w.pg, reset); err != nil {
		return err
	}
	w.m.Holes = append(w.m.Holes, hole{Timeline: w.m.Live, Start: startLSN, End: endLSN})
	w.logf("  WAL hole on timeline %d from %s to %s", w.m.Live, startLSN, endLSN)
	if err := w.sc.Start(); err != nil {
		return err
	}
	return w.waitReady()
}

func clipList(s []string) string {
	if len(s) > 10 {
		return strings.Join(s[:10], " ") + fmt.Sprintf(" ... (%d more)", len(s)-10)
	}
	return strings.Join(s, " ")
}
