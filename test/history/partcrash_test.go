package history

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// partRange is bytes [Start, End) of a segment.
type partRange struct{ Start, End uint64 }

func (p partRange) String() string { return fmt.Sprintf("[%X, %X)", p.Start, p.End) }

// partCrash is issue 20's "crash between parts": the sidecar is killed (SIGKILL) and the
// archive is left as a crash with tail parts in flight leaves it. With the sidecar dead,
// WAL is written past the stored run of the live timeline's tail segment (in synchronous
// mode a commit also waits for the dead sidecar), and of that WAL, cut in four parts as the
// uploader issues them, a part past a gap is stored: N even leaves the run's next part
// missing, N odd stores it and leaves the one after it missing. The bytes are the server's
// own (its pg_wal file, up to pg_current_wal_flush_lsn), stored with walarchive's PutPart.
//
// With the sidecar dead: the run the archive reports still ends before the gap, no listing
// shows a hole, verify is clean, a restore to latest holds every row committed before the
// kill, no row that was never written and no commit missing before its newest, and the
// newest time list reports for the live timeline restores exactly. The sidecar is then
// restarted; until it has archived the server's WAL, neither what it acknowledges to the
// server nor what its status reports as archived may run ahead of the archive's stored run
// (invariant g).
func (w *world) partCrash(s step) error {
	if err := w.waitArchived(); err != nil {
		return err
	}
	a, err := w.archive()
	if err != nil {
		return err
	}
	segSize, live := a.SegmentSize(), w.m.Live
	holesBefore, err := w.liveHoleWindows()
	if err != nil {
		return err
	}
	before := w.m.all(live)

	// Step 1: the crash, and the tail segment's stored run.
	w.sc.Kill()
	at, err := w.flushLSN()
	if err != nil {
		return err
	}
	seg := at.SegmentNo(segSize)
	tail, err := a.ListTail(w.ctx, live, seg)
	if err != nil {
		return err
	}
	_, runEnd := tail.Run()
	if tail.Complete || runEnd+64 > segSize {
		// Complete (a switched segment), or too near its end: the next one is the tail.
		seg++
		if tail, err = a.ListTail(w.ctx, live, seg); err != nil {
			return err
		}
		_, runEnd = tail.Run()
	}

	// Step 2: WAL past the run with the sidecar dead. In synchronous mode a commit waits
	// for it (its WAL is flushed locally); the rows after it commit locally.
	var blocked *writer
	if w.plan.Config.Sync {
		if blocked, err = startWriter(w.ctx, w.pg, w.nextNote, 0); err != nil {
			return err
		}
	}
	local := &localRows{prefix: fmt.Sprintf("s%d-p%d-", w.plan.Seed, w.step)}
	// On an error with the sidecar dead, the waiting commit needs it back to return.
	finishBlocked := func() {
		if blocked != nil {
			if w.sc.Exited() {
				w.sc.Start()
			}
			blocked.finish()
		}
	}
	end := uint64(0)
	for round := 0; ; round++ {
		if err := local.write(w.ctx, w.pg, 20+s.N%180); err != nil {
			finishBlocked()
			return err
		}
		flush, err := w.flushLSN()
		if err != nil {
			finishBlocked()
			return err
		}
		switch fs := flush.SegmentNo(segSize); {
		case fs < seg:
			end = 0 // the server's WAL has not reached the segment yet
		case fs == seg:
			end = flush.SegmentOffset(segSize)
		default:
			end = segSize
		}
		if end >= runEnd+64 {
			break
		}
		if round == 10 {
			finishBlocked()
			return fmt.Errorf("partcrash: the server's WAL in segment %X ends at %X, not 64 bytes past the stored run's end %X, after 10 rounds of rows", seg, end, runEnd)
		}
	}

	// Step 3: the parts that landed before the crash, with the server's bytes.
	all, stored, wantRun := crashParts(s, runEnd, end)
	from := stored[0].Start
	data, err := w.walBytes(a, live, seg, from, end)
	if err != nil {
		finishBlocked()
		return err
	}
	for _, p := range stored {
		if _, err := a.PutPart(w.ctx, live, seg, p.Start, p.End, bytes.NewReader(data[p.Start-from:p.End-from])); err != nil {
			finishBlocked()
			return fmt.Errorf("partcrash: store part %s of %s: %w", p, walarchive.SegmentName(live, seg, segSize), err)
		}
	}
	w.logf("  partcrash: sidecar killed; segment %s's run ended at %X; parts in flight %v, stored %v (server WAL in it to %X)",
		walarchive.SegmentName(live, seg, segSize), runEnd, all, stored, end)
	w.tally.add("partcrash-parts-stored", len(stored))

	// Step 4: the checks with the sidecar dead.
	restores, deadErr := w.checkCrashedTail(a, live, seg, wantRun, holesBefore, before)

	// Step 5: restart; the acknowledgement never runs ahead of the stored run.
	// Watched from the start: the restarted sidecar may store and acknowledge before it
	// reports ready.
	if err := w.sc.Start(); err != nil {
		finishBlocked()
		return err
	}
	ackErr := w.watchAcks(a, live)
	if err := w.waitReady(); err != nil && ackErr == nil {
		ackErr = err
	}
	var werr error
	if blocked != nil {
		werr = blocked.waitCount(1, writeTimeout)
		blocked.finish()
		if err := w.settle(blocked, werr); err != nil {
			return err
		}
	}
	if err := w.settle(&writer{acked: local.notes}, nil); err != nil {
		return err
	}
	if deadErr != nil {
		return deadErr
	}
	if err := restores.compare(w); err != nil {
		return err
	}
	return ackErr
}

// crashParts cuts [runEnd, end) into the four parts an uploader has in flight (cut points
// drawn from s) and chooses those stored, by start: N even leaves the first missing, N odd
// stores the first (one time in two reaching back into the run, as a part issued again
// does) and leaves the second missing; at least one part past the gap is stored. It returns
// the parts, those stored, and where the tail's run must end with them.
func crashParts(s step, runEnd, end uint64) (all, stored []partRange, wantRun uint64) {
	r := rand.New(rand.NewPCG(uint64(s.N), uint64(s.F*1000)))
	n := end - runEnd // >= 64
	cuts := map[uint64]bool{}
	for len(cuts) < 3 {
		cuts[runEnd+1+r.Uint64N(n-1)] = true
	}
	points := []uint64{runEnd}
	for c := range cuts {
		points = append(points, c)
	}
	points = append(points, end)
	slices.Sort(points)
	for i := 0; i+1 < len(points); i++ {
		all = append(all, partRange{points[i], points[i+1]})
	}
	gap := 0 // the missing part
	wantRun = runEnd
	if s.N%2 == 1 {
		gap, wantRun = 1, all[0].End
		stored = append(stored, all[0])
	}
	var past []partRange
	for _, p := range all[gap+1:] {
		if r.IntN(2) == 0 {
			past = append(past, p)
		}
	}
	if len(past) == 0 {
		past = append(past, all[gap+1+r.IntN(len(all)-gap-1)])
	}
	// A part issued again after a failed one may start before the run's end: the run's
	// next part, when stored, overlaps the run one time in two.
	if len(stored) > 0 && runEnd > 0 && r.IntN(2) == 0 {
		stored[0].Start = runEnd - min(runEnd, 1+r.Uint64N(4096))
	}
	return all, append(stored, past...), wantRun
}

// localRows writes ledger rows with synchronous_commit = local: they commit while a
// synchronous standby is away.
type localRows struct {
	prefix string
	notes  []string
}

func (l *localRows) write(ctx context.Context, pg *harness.Postgres, n int) error {
	conn, err := pgx.Connect(ctx, pg.ConnString(harness.PGSuperuser, "postgres"))
	if err != nil {
		return fmt.Errorf("local ledger writer: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SET synchronous_commit = local"); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		note := fmt.Sprintf("%s%04d", l.prefix, len(l.notes))
		if _, err := conn.Exec(ctx, "INSERT INTO ledger (note) VALUES ($1)", note); err != nil {
			return fmt.Errorf("local ledger writer: %w", err)
		}
		l.notes = append(l.notes, note)
	}
	return nil
}

// walBytes reads bytes [from, to) of segment seg of timeline tli from the server's pg_wal.
func (w *world) walBytes(a *walarchive.Archive, tli uint32, seg, from, to uint64) ([]byte, error) {
	name := walarchive.SegmentName(tli, seg, a.SegmentSize())
	s, err := w.query(fmt.Sprintf("SELECT encode(pg_read_binary_file('pg_wal/%s', %d, %d), 'hex')", name, from, to-from))
	if err != nil {
		return nil, fmt.Errorf("partcrash: read pg_wal/%s [%X, %X): %w", name, from, to, err)
	}
	b, err := hex.DecodeString(s)
	if err != nil || uint64(len(b)) != to-from {
		return nil, fmt.Errorf("partcrash: pg_wal/%s [%X, %X): got %d bytes (%v)", name, from, to, len(b), err)
	}
	return b, nil
}

// rowsUpTo returns the rows of ledger committed at or before t.
func rowsUpTo(ledger map[string]time.Time, t time.Time) map[string]time.Time {
	out := map[string]time.Time{}
	for n, ts := range ledger {
		if !ts.After(t) {
			out[n] = ts
		}
	}
	return out
}

// crashRestores are the restores taken with the sidecar dead, compared with the server's
// ledger once the sidecar is back (a commit waiting for a synchronous standby is not
// visible on the server until then, though its WAL may be archived).
type crashRestores struct {
	seg    string
	before map[string]time.Time // the rows archived before the kill
	latest map[string]time.Time // restore --to latest
	// end is the newest reported time of the live timeline and at its restore (nil: none).
	end *timeRange
	at  map[string]time.Time
}

// checkCrashedTail runs the checks on an archive left by a crash between parts (the
// sidecar dead): the tail's run ends at wantRun, no listing shows a hole, verify is clean;
// it restores to latest and to the end of the live timeline's reported window, for
// crashRestores.compare. It returns nil restores when latest is not promised (a hole).
func (w *world) checkCrashedTail(a *walarchive.Archive, live uint32, seg, wantRun uint64, holesBefore int, before map[string]time.Time) (*crashRestores, error) {
	name := walarchive.SegmentName(live, seg, a.SegmentSize())
	t, err := a.ListTail(w.ctx, live, seg)
	if err != nil {
		return nil, err
	}
	if _, end := t.Run(); end != wantRun || t.Complete {
		return nil, fail("g: a crash between parts leaves the stored run as it was", "ListTail of %s: complete %v, run ends at %X; want the run to end at %X (parts %v)",
			name, t.Complete, end, wantRun, t.Parts)
	}
	if err := w.pollReach(a, seg); err != nil {
		return nil, err
	}
	holes, err := w.liveHoleWindows()
	if err != nil {
		return nil, err
	}
	if holes > holesBefore {
		return nil, fail("f: a listing never shows a hole that is not one", "after a crash between parts (segment %s, parts past a gap), kcbackup list --json shows %d windows of live timeline %d ending at a hole (%d before)",
			name, holes, live, holesBefore)
	}
	out, stderr, code := w.kcbackup(cliTimeout, nil, "verify", "--storage", w.url)
	if code != 0 && len(w.m.Holes) == 0 {
		return nil, fail("d: verify is clean on a healthy archive", "verify after a crash between parts (sidecar dead, parts past a gap in %s) exited %d:\n%s%s",
			name, code, out, stderr)
	}
	cat, err := w.catalog()
	if err != nil {
		return nil, err
	}
	if !w.m.restorableLatest(cat.Backups) {
		w.logf("  partcrash: (b) skipped with the sidecar dead: no backup after the live path's WAL hole")
		return nil, nil
	}
	cr := &crashRestores{seg: name, before: before}
	got, code, stderr, err := w.restoreLedger("latest")
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fail("b: latest holds every acknowledged commit", "restore --to latest after a crash between parts (sidecar dead, parts past a gap in %s): exit %d: %s\nthe archive's WAL objects by when they were stored (newest last):\n%s",
			name, code, strings.TrimSpace(stderr), w.walStoredOrder(16))
	}
	cr.latest = got
	// The newest time list reports for the live timeline must restore exactly: a window
	// that reached into the WAL past the gap would promise commits the archive lacks.
	for _, r := range rangesOf(cat.Ranges, live) {
		if cr.end == nil || r.To.After(cr.end.To) {
			cr.end = &r
		}
	}
	if cr.end != nil {
		to := cr.end.To.Format(time.RFC3339Nano)
		at, code, stderr, err := w.restoreLedger(to, "--timeline", fmt.Sprint(live))
		if err != nil {
			return nil, err
		}
		if code != 0 {
			return nil, fail("a: every reported time restores", "after a crash between parts (sidecar dead, parts past a gap in %s), restore --to %s --timeline %d (the end of reported %s): exit %d: %s",
				name, to, live, cr.end, code, strings.TrimSpace(stderr))
		}
		cr.at = at
	}
	w.logf("  partcrash: with the sidecar dead, verify exit %d; restored latest (%d rows) and the end of reported %v (%d rows)", code, len(cr.latest), cr.end, len(cr.at))
	return cr, nil
}

// compare checks the restores taken with the sidecar dead against the server's ledger:
// latest holds every row archived before the kill and is the server's state at its newest
// commit (no row never written, none missing before it), and the end of the reported
// window is the server's state then (a finding: the history goes on, the sidecar's
// restart filled the gap).
func (cr *crashRestores) compare(w *world) error {
	if cr == nil {
		return nil
	}
	ledger, err := readLedger(w.ctx, w.pg)
	if err != nil {
		return err
	}
	var missing []string
	for n := range cr.before {
		if _, ok := cr.latest[n]; !ok {
			missing = append(missing, n)
		}
	}
	var newest time.Time
	for _, ts := range cr.latest {
		if ts.After(newest) {
			newest = ts
		}
	}
	if len(missing) > 0 {
		return fail("b: latest holds every acknowledged commit", "restore --to latest after a crash between parts (sidecar dead, parts past a gap in %s) lacks %d of the %d rows archived before the kill: %s",
			cr.seg, len(missing), len(cr.before), clipList(missing))
	}
	if d := diffRows(cr.latest, rowsUpTo(ledger, newest)); d != "" {
		return fail("a: restore holds exactly the rows committed by then", "restore --to latest after a crash between parts (sidecar dead, parts past a gap in %s) is not the server's state at its newest commit %s: %s",
			cr.seg, newest.Format(time.RFC3339Nano), d)
	}
	if cr.end == nil {
		return nil
	}
	if d := diffRows(cr.at, rowsUpTo(ledger, cr.end.To)); d != "" {
		w.finding(fail("a: a reported time after a crash between parts restores exactly", "after a crash between parts (sidecar dead, parts past a gap in %s), restore --to %s --timeline %d (the end of reported %s; restore to latest reaches %s) exits 0 and holds %s",
			cr.seg, cr.end.To.Format(time.RFC3339Nano), cr.end.Timeline, cr.end, newest.Format(time.RFC3339Nano), d))
		return nil
	}
	w.logf("  partcrash: the end of reported %s restored exactly (%d rows)", cr.end, len(cr.at))
	return nil
}

// watchAcks samples, until the restarted sidecar has archived the server's WAL as it was
// at the restart, what the sidecar acknowledges to the server (pg_stat_replication's
// flush_lsn) and what its status reports archived, and checks each against the archive
// read after it: the archive must hold the live path's WAL up to there (invariant g).
func (w *world) watchAcks(a *walarchive.Archive, live uint32) error {
	target, err := w.flushLSN()
	if err != nil {
		return err
	}
	g, err := a.ReadGraph(w.ctx)
	if err != nil {
		return err
	}
	p, err := g.Path(live)
	if err != nil {
		return fmt.Errorf("partcrash: path of live timeline %d: %w", live, err)
	}
	deadline := time.Now().Add(catchUpTimeout)
	samples := 0
	for {
		rep, err := w.query("SELECT coalesce(max(flush_lsn)::text, '') FROM pg_stat_replication WHERE application_name = 'kcbackup'")
		if err != nil {
			return err
		}
		st, serr := w.sc.Status(w.ctx)
		claims := map[string]string{}
		if rep != "" {
			claims["acknowledged to the server (pg_stat_replication.flush_lsn)"] = rep
		}
		if serr == nil && st.Timeline == live && st.ArchivedLSN != "" {
			claims["reported archived (status archivedLSN)"] = st.ArchivedLSN
		}
		for what, s := range claims {
			l, err := walarchive.ParseLSN(s)
			if err != nil || l == 0 || w.inKnownHole(live, l-1) {
				// A position whose previous byte was lost in a WAL hole (the hole op: the slot
				// was invalidated, the server no longer has it) claims nothing the archive
				// could hold: a session after the hole starts there.
				continue
			}
			ok, why, err := w.storedThrough(a, p, live, l)
			if err != nil {
				return err
			}
			if !ok {
				return fail("g: the acknowledgement never runs ahead of the stored run", "after a crash between parts the restarted sidecar %s %s, but the archive holds less: %s\n%s", what, l, why, tailLines(w.sc.Log(), 20))
			}
			samples++
		}
		if serr == nil && st.Timeline == live {
			if l, err := walarchive.ParseLSN(st.ArchivedLSN); err == nil && l >= target {
				w.tally.add("partcrash-ack-samples", samples)
				w.logf("  partcrash: restarted sidecar archived to %s (server at %s when it restarted); %d acknowledgements checked against the archive", l, target, samples)
				return nil
			}
		}
		if w.sc.Exited() {
			return fail("archiving", "the sidecar exited after a crash between parts:\n%s", tailLines(w.sc.Log(), 30))
		}
		if time.Now().After(deadline) {
			return fail("archiving", "after a crash between parts the restarted sidecar did not archive up to %s within %s\n%s", target, catchUpTimeout, tailLines(w.sc.Log(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// inKnownHole reports whether the byte at lsn of timeline tli was lost in a WAL hole the
// checker made.
func (w *world) inKnownHole(tli uint32, lsn walarchive.LSN) bool {
	for _, h := range w.m.Holes {
		if h.Timeline == tli && lsn >= h.Start && lsn < h.End {
			return true
		}
	}
	return false
}

// storedThrough reports whether the archive holds the WAL of live timeline's path p up to
// lsn: the segment holding the byte before lsn is complete, or its tail's run reaches lsn.
// A tail being removed (its complete segment just stored) may list short: that is read as
// stored.
func (w *world) storedThrough(a *walarchive.Archive, p walarchive.WALPath, live uint32, lsn walarchive.LSN) (bool, string, error) {
	segSize := a.SegmentSize()
	seg := (uint64(lsn) - 1) / segSize
	off := uint64(lsn) - seg*segSize
	var seen []string
	for _, tli := range []uint32{p.TimelineOfSegment(seg), live} {
		t, err := a.ListTail(w.ctx, tli, seg)
		if err != nil {
			return false, "", err
		}
		_, end := t.Run()
		if t.Complete || end >= off {
			return true, "", nil
		}
		seen = append(seen, fmt.Sprintf("%s: no complete segment, tail run to %X of %X (parts %v)", walarchive.SegmentName(tli, seg, segSize), end, off, t.Parts))
	}
	for _, tli := range []uint32{p.TimelineOfSegment(seg), live} {
		if _, err := a.Storage.Stat(w.ctx, walarchive.SegmentKey(tli, seg, segSize)); err == nil {
			return true, "", nil
		}
	}
	return false, strings.Join(seen, "; "), nil
}
