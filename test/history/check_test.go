package history

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// prune runs `kcbackup prune` with flags chosen by s and checks invariant (c): every time of
// the live timeline's reported ranges that the retention rules promise stays reported.
// N mod 3 chooses --keep-backups (0), --keep-within (1) or both (2); N/3 mod 3 + 1 is the
// count; F is the share of the time since the first backup that --keep-within keeps.
func (w *world) prune(s step) error {
	before, err := w.catalog()
	if err != nil {
		return err
	}
	if len(before.Backups) == 0 {
		return nil
	}
	keepN := 0
	var within time.Duration
	if s.N%3 != 1 {
		keepN = 1 + (s.N/3)%3
	}
	if s.N%3 != 0 {
		oldest := before.Backups[0].StopTime
		for _, b := range before.Backups {
			if b.StopTime.Before(oldest) {
				oldest = b.StopTime
			}
		}
		within = time.Duration(s.F * float64(time.Since(oldest))).Round(time.Second)
		if within < time.Second {
			within = time.Second
		}
	}
	args := []string{"prune", "--storage", w.url}
	if keepN > 0 {
		args = append(args, "--keep-backups", fmt.Sprint(keepN))
	}
	if within > 0 {
		args = append(args, "--keep-within", within.String())
	}
	out, stderr, code := w.kcbackup(cliTimeout, nil, args...)
	now := time.Now()
	if code != 0 {
		return fail("c: prune", "%s exited %d: %s", strings.Join(args, " "), code, stderr)
	}
	w.logf("  %s: %s", strings.Join(args[3:], " "), strings.TrimSpace(lastLine(out)))
	after, err := w.catalog()
	if err != nil {
		return err
	}

	// The promise: on the live timeline's path, the newest keepN backups and those that
	// stopped within `within` are kept, with what restores from them to the present.
	var onPath []backupInfo
	for _, b := range before.Backups {
		if w.m.onPath(w.m.Live, b.Timeline, b.StopLSN) {
			onPath = append(onPath, b)
		}
	}
	if len(onPath) == 0 {
		return nil
	}
	sort.Slice(onPath, func(i, j int) bool { return onPath[i].StopTime.After(onPath[j].StopTime) })
	var cutoff time.Time
	if keepN > 0 {
		cutoff = onPath[min(keepN, len(onPath))-1].StopTime
	}
	if within > 0 {
		if c := now.Add(-within); cutoff.IsZero() || c.Before(cutoff) {
			cutoff = c
		}
	}
	liveAfter := rangesOf(after.Ranges, w.m.Live)
	for _, r := range rangesOf(before.Ranges, w.m.Live) {
		from := r.From
		if from.Before(cutoff) {
			from = cutoff
		}
		if !from.Before(r.To) {
			continue
		}
		if !covered(liveAfter, from, r.To, time.Millisecond) {
			return fail("c: prune keeps the retention promise",
				"%s: timeline %d's times %s..%s were reported and promised (cutoff %s) but after prune the ranges are %v (before: %v; backups before %s, after %s)",
				strings.Join(args[3:], " "), w.m.Live, from.Format(time.RFC3339Nano), r.To.Format(time.RFC3339Nano), cutoff.Format(time.RFC3339Nano),
				liveAfter, before.Ranges, backupIDs(before.Backups), backupIDs(after.Backups))
		}
	}
	return nil
}

func rangesOf(rs []timeRange, tli uint32) []timeRange {
	var out []timeRange
	for _, r := range rs {
		if r.Timeline == tli {
			out = append(out, r)
		}
	}
	return out
}

func backupIDs(bs []backupInfo) string {
	var s []string
	for _, b := range bs {
		s = append(s, fmt.Sprintf("%s(tl%d %s..%s stop %s)", b.ID, b.Timeline, b.StartLSN, b.StopLSN, b.StopTime.UTC().Format("15:04:05.000")))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// heavy operations are followed by a restore to latest (invariant b); writes and backups
// only by the sampled restore.
var heavy = map[string]bool{opCrash: true, opKill: true, opOutage: true, opPromote: true, opRestore: true, opPrune: true, opHole: true, opCopy: true, opBoundary: true, opPartCrash: true}

// check verifies the invariants after step i, with the archive quiet and caught up.
func (w *world) check(i int, s step, last bool) error {
	r := rand.New(rand.NewPCG(uint64(w.plan.Seed), uint64(i+1000)))
	if err := w.waitArchived(); err != nil {
		return err
	}
	cat, err := w.catalog()
	if err != nil {
		return err
	}
	w.logf("  reported: %v", cat.Ranges)
	if err := w.checkSample(r, cat); err != nil {
		return err
	}
	if heavy[s.Op] || last {
		if err := w.checkLatest(cat); err != nil {
			return err
		}
	}
	if w.plan.Config.Compat == compatIgnoreConditionalWrites {
		if err := w.checkImmutable(r, i < 0); err != nil {
			return err
		}
	}
	return w.checkVerify()
}

// checkSample is invariant (a), sampled: a restore to one time, chosen one of three ways.
func (w *world) checkSample(r *rand.Rand, cat catalog) error {
	dead := w.deadTimelines()
	live := rangesOf(cat.Ranges, w.m.Live)
	kind := r.IntN(4)
	switch {
	case kind == 3 && len(dead) > 0:
		return w.sampleDeadTimeline(r, dead[r.IntN(len(dead))], cat)
	case kind == 2 && len(live) > 0:
		return w.sampleDefaultTimeline(r, live[r.IntN(len(live))])
	case len(cat.Ranges) > 0:
		return w.sampleRange(r, cat.Ranges[r.IntN(len(cat.Ranges))])
	}
	w.logf("  (a) no reported range to sample")
	return nil
}

// deadTimelines are the timelines the cluster left, with rows, by number.
func (w *world) deadTimelines() []*timelineModel {
	var dead []*timelineModel
	for _, tl := range w.m.Timelines {
		if tl.ID != w.m.Live && len(tl.Rows) > 0 {
			dead = append(dead, tl)
		}
	}
	sort.Slice(dead, func(i, j int) bool { return dead[i].ID < dead[j].ID })
	return dead
}

// sampleTime picks a time in rg: a commit timestamp of its timeline in it (the inclusive
// bound), or any microsecond.
func (w *world) sampleTime(r *rand.Rand, rg timeRange) time.Time {
	if r.IntN(3) == 0 {
		var in []time.Time
		for _, row := range w.m.Timelines[rg.Timeline].Rows {
			if !row.TS.Before(rg.From) && !row.TS.After(rg.To) {
				in = append(in, row.TS)
			}
		}
		if len(in) > 0 {
			return in[r.IntN(len(in))]
		}
	}
	return pointIn(rg, r.Float64())
}

// sampleRange: a reported time restored along its timeline holds exactly the rows
// committed at or before it on that timeline's history.
func (w *world) sampleRange(r *rand.Rand, rg timeRange) error {
	if w.m.Timelines[rg.Timeline] == nil {
		return fail("a: every reported time restores", "reported range %s is on a timeline the cluster never wrote on", rg)
	}
	t := w.sampleTime(r, rg)
	to := t.Format(time.RFC3339Nano)
	got, code, stderr, err := w.restoreLedger(to, "--timeline", fmt.Sprint(rg.Timeline))
	if err != nil {
		return err
	}
	if code != 0 {
		return fail("a: every reported time restores", "restore --to %s --timeline %d (in reported %s): exit %d: %s", to, rg.Timeline, rg, code, strings.TrimSpace(stderr))
	}
	if d := diffRows(got, w.m.expectedAt(rg.Timeline, t)); d != "" {
		return fail("a: restore holds exactly the rows committed by then", "restore --to %s --timeline %d (in reported %s) holds %s", to, rg.Timeline, rg, d)
	}
	w.logf("  (a) restore to %s on timeline %d: exact (%d rows)", to, rg.Timeline, len(got))
	return nil
}

// reportedTimelinesAt lists the timelines whose reported ranges hold t.
func (w *world) reportedTimelinesAt(t time.Time) ([]uint32, error) {
	cat, err := w.catalog()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, r := range cat.Ranges {
		if !t.Before(r.From) && !t.After(r.To) && !slices.Contains(out, r.Timeline) {
			out = append(out, r.Timeline)
		}
	}
	return out, nil
}

// sampleDefaultTimeline: without --timeline, a time means the timeline the cluster wrote
// on at that time. A restore gives that timeline's state, or refuses when the time also
// lies on the newest timeline's path with another state (ambiguous).
func (w *world) sampleDefaultTimeline(r *rand.Rand, rg timeRange) error {
	t := w.sampleTime(r, rg)
	to := t.Format(time.RFC3339Nano)
	then := w.m.liveAt(t)
	want := w.m.expectedAt(then, t)
	ambiguous := diffRows(w.m.expectedAt(w.m.Live, t), want) != ""
	got, code, stderr, err := w.restoreLedger(to)
	if err != nil {
		return err
	}
	if code != 0 {
		if ambiguous {
			w.logf("  (a) restore to %s without --timeline refused (timelines %d and %d differ then): %s", to, then, w.m.Live, lastLine(stderr))
			return nil
		}
		// The product may also refuse, naming --timeline, a time that the reported ranges of
		// two timelines hold (it cannot tell when an old timeline's server stopped, so it
		// fails closed); restores with --timeline are checked exactly by sampleWithTimeline.
		if strings.Contains(stderr, "lies on more than one timeline") && strings.Contains(stderr, "--timeline") {
			if tlis, err := w.reportedTimelinesAt(t); err == nil && len(tlis) > 1 {
				w.logf("  (a) restore to %s without --timeline refused: timelines %v all report it: %s", to, tlis, lastLine(stderr))
				return nil
			}
		}
		return fail("a: every reported time restores", "restore --to %s (in reported %s, no --timeline): exit %d: %s", to, rg, code, strings.TrimSpace(stderr))
	}
	if d := diffRows(got, want); d != "" {
		if ambiguous && diffRows(got, w.m.expectedAt(w.m.Live, t)) == "" {
			return fail("a: an ambiguous time is refused", "restore --to %s without --timeline silently gave timeline %d's state, but the cluster wrote on timeline %d then (which holds %d rows at that time, timeline %d %d)",
				to, w.m.Live, then, len(want), w.m.Live, len(got))
		}
		return fail("a: restore holds exactly the rows committed by then", "restore --to %s (no --timeline; timeline %d was live then) holds %s", to, then, d)
	}
	w.logf("  (a) restore to %s without --timeline: exact (timeline %d, %d rows)", to, then, len(got))
	return nil
}

// sampleDeadTimeline: a time in an old timeline's life, restored with --timeline, is exact
// when accepted; refused only when no reported range covers it.
func (w *world) sampleDeadTimeline(r *rand.Rand, tl *timelineModel, cat catalog) error {
	from, to := tl.life()
	if !to.After(from) {
		return nil
	}
	t := pointIn(timeRange{Timeline: tl.ID, From: from, To: to}, r.Float64())
	target := t.Format(time.RFC3339Nano)
	reported := covered(rangesOf(cat.Ranges, tl.ID), t, t, 0)
	got, code, stderr, err := w.restoreLedger(target, "--timeline", fmt.Sprint(tl.ID))
	if err != nil {
		return err
	}
	if code != 0 {
		if reported {
			return fail("a: every reported time restores", "restore --to %s --timeline %d (reported): exit %d: %s", target, tl.ID, code, strings.TrimSpace(stderr))
		}
		w.logf("  (a) restore to %s on old timeline %d refused (not reported): %s", target, tl.ID, lastLine(stderr))
		return nil
	}
	if d := diffRows(got, w.m.expectedAt(tl.ID, t)); d != "" {
		return fail("a: restore holds exactly the rows committed by then", "restore --to %s --timeline %d (old timeline, reported %v) holds %s", target, tl.ID, reported, d)
	}
	w.logf("  (a) restore to %s on old timeline %d: exact (%d rows)", target, tl.ID, len(got))
	return nil
}

// checkLatest is invariant (b): with the archive caught up, a restore to latest holds every
// commit of the live timeline.
func (w *world) checkLatest(cat catalog) error {
	if !w.m.restorableLatest(cat.Backups) {
		w.logf("  (b) skipped: no backup on the live timeline's path after its WAL hole")
		return nil
	}
	got, code, stderr, err := w.restoreLedger("latest")
	if err != nil {
		return err
	}
	if code != 0 {
		return fail("b: latest holds every acknowledged commit", "restore --to latest of timeline %d: exit %d: %s\nthe archive's WAL objects by when they were stored (newest last):\n%s", w.m.Live, code, strings.TrimSpace(stderr), w.walStoredOrder(16))
	}
	if d := diffRows(got, w.m.all(w.m.Live)); d != "" {
		return fail("b: latest holds every acknowledged commit", "restore --to latest of timeline %d holds %s", w.m.Live, d)
	}
	w.logf("  (b) restore to latest: all %d rows of timeline %d", len(got), w.m.Live)
	return nil
}

// verifyRows bounds the rows written while verify runs.
const verifyRows = 500

// checkVerify is invariant (d): verify is clean on a healthy archive while it is live
// (rows are written during the verify). An archive with a WAL hole is not healthy.
func (w *world) checkVerify() error {
	wr, err := startWriter(w.ctx, w.pg, w.nextNote, verifyRows)
	if err != nil {
		return err
	}
	out, stderr, code := w.kcbackup(cliTimeout, nil, "verify", "--storage", w.url)
	wr.finish()
	if err := w.settle(wr, nil); err != nil {
		return err
	}
	if code != 0 && len(w.m.Holes) == 0 {
		return fail("d: verify is clean on a healthy archive", "verify (live, %d rows written meanwhile) exited %d:\n%s%s", len(wr.acked), code, out, stderr)
	}
	w.logf("  (d) verify exit %d: %s", code, lastLine(out))
	return nil
}

// walStoredOrder lists the archive's WAL objects (histories included) by when they were
// stored, the last n, for a failure report: the order decides, for instance, whether a
// timeline was still written after another branched from it.
func (w *world) walStoredOrder(n int) string {
	a, err := w.archive()
	if err != nil {
		return err.Error()
	}
	objs, err := a.Storage.List(w.ctx, "wal/")
	if err != nil {
		return err.Error()
	}
	sort.SliceStable(objs, func(i, j int) bool { return objs[i].ModTime.Before(objs[j].ModTime) })
	if len(objs) > n {
		objs = objs[len(objs)-n:]
	}
	var lines []string
	for _, o := range objs {
		lines = append(lines, fmt.Sprintf("  %s %s", o.ModTime.UTC().Format("15:04:05.000000"), o.Key))
	}
	return strings.Join(lines, "\n")
}
