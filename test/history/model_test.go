package history

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// row is one ledger transaction: its unique note and its commit timestamp
// (pg_xact_commit_timestamp), and whether the client saw the commit acknowledged.
type row struct {
	Note  string
	TS    time.Time
	Acked bool
}

// timelineModel is what was committed along one timeline's whole history: the rows it
// inherited at its birth and its own, ordered by commit time.
type timelineModel struct {
	ID      uint32
	Parent  uint32
	Born    time.Time // wall-clock time the cluster left its parent (0 for timeline 1)
	Died    time.Time // when the cluster left it (zero while live)
	History walarchive.TimelineHistory
	Rows    []row
}

// hole is WAL lost before it was archived: from the slot's position to End, on Timeline.
type hole struct {
	Timeline   uint32
	Start, End walarchive.LSN
}

// model is what the checker knows was committed, per timeline.
type model struct {
	Timelines map[uint32]*timelineModel
	Live      uint32
	Holes     []hole
}

func newModel() *model {
	return &model{Timelines: map[uint32]*timelineModel{1: {ID: 1}}, Live: 1}
}

func (m *model) live() *timelineModel { return m.Timelines[m.Live] }

// add records committed rows on the live timeline.
func (m *model) add(rows []row) {
	tl := m.live()
	tl.Rows = append(tl.Rows, rows...)
	sort.SliceStable(tl.Rows, func(i, j int) bool { return tl.Rows[i].TS.Before(tl.Rows[j].TS) })
}

// expectedAt returns the notes committed at or before t along timeline tli's history.
func (m *model) expectedAt(tli uint32, t time.Time) map[string]time.Time {
	out := map[string]time.Time{}
	for _, r := range m.Timelines[tli].Rows {
		if !r.TS.After(t) {
			out[r.Note] = r.TS
		}
	}
	return out
}

// all returns every note committed along timeline tli's history.
func (m *model) all(tli uint32) map[string]time.Time {
	return m.expectedAt(tli, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC))
}

// life returns when the cluster wrote on tl: from its birth (its first row for timeline 1)
// to its death (now while it is live).
func (tl *timelineModel) life() (time.Time, time.Time) {
	from, to := tl.Born, tl.Died
	if from.IsZero() && len(tl.Rows) > 0 {
		from = tl.Rows[0].TS
	}
	if to.IsZero() {
		to = time.Now()
	}
	return from, to
}

// liveAt returns the timeline the cluster wrote on at wall-clock time t.
func (m *model) liveAt(t time.Time) uint32 {
	best := uint32(1)
	for id, tl := range m.Timelines {
		if !tl.Born.After(t) && tl.Born.After(m.Timelines[best].Born) {
			best = id
		}
	}
	return best
}

// fork starts timeline id, born now from parent, holding rows.
func (m *model) fork(id, parent uint32, history walarchive.TimelineHistory, rows map[string]time.Time, born time.Time) {
	m.live().Died = born
	tl := &timelineModel{ID: id, Parent: parent, Born: born, History: history}
	for note, ts := range rows {
		tl.Rows = append(tl.Rows, row{Note: note, TS: ts, Acked: true})
	}
	sort.Slice(tl.Rows, func(i, j int) bool { return tl.Rows[i].TS.Before(tl.Rows[j].TS) })
	m.Timelines[id] = tl
	m.Live = id
}

// onPath reports whether WAL position lsn of timeline tli lies on timeline target's path.
// An ancestor's part of the path ends at the earliest switch point from it on (see
// historyOf: switch points need not increase).
func (m *model) onPath(target, tli uint32, lsn walarchive.LSN) bool {
	if tli == target {
		return true
	}
	h := m.Timelines[target].History
	for i, s := range h {
		if s.Parent != tli {
			continue
		}
		end := s.SwitchPoint
		for _, later := range h[i+1:] {
			end = min(end, later.SwitchPoint)
		}
		return lsn <= end
	}
	return false
}

// restorableLatest reports whether the live timeline has a backup on its path started
// after every hole on its path, so that a restore to its latest point is promised.
func (m *model) restorableLatest(backups []backupInfo) bool {
	var after walarchive.LSN
	for _, h := range m.Holes {
		if m.onPath(m.Live, h.Timeline, h.Start) && h.End > after {
			after = h.End
		}
	}
	for _, b := range backups {
		if m.onPath(m.Live, b.Timeline, b.StopLSN) && b.StartLSN >= after {
			return true
		}
	}
	return false
}

// diffRows compares restored rows with the expected ones and describes the difference.
func diffRows(got, want map[string]time.Time) string {
	var missing, extra []string
	for n, ts := range want {
		if _, ok := got[n]; !ok {
			missing = append(missing, n+"@"+ts.UTC().Format("15:04:05.000000"))
		}
	}
	for n, ts := range got {
		if _, ok := want[n]; !ok {
			extra = append(extra, n+"@"+ts.UTC().Format("15:04:05.000000"))
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	slices.Sort(missing)
	slices.Sort(extra)
	clip := func(s []string) string {
		if len(s) > 8 {
			return strings.Join(s[:4], " ") + fmt.Sprintf(" ...(%d)... ", len(s)-8) + strings.Join(s[len(s)-4:], " ")
		}
		return strings.Join(s, " ")
	}
	return fmt.Sprintf("%d rows (want %d): %d missing [%s], %d extra [%s]", len(got), len(want), len(missing), clip(missing), len(extra), clip(extra))
}

// readLedger returns every ledger row of a server with its commit timestamp.
func readLedger(ctx context.Context, pg *harness.Postgres) (map[string]time.Time, error) {
	s, err := pg.QueryString(ctx, `SELECT coalesce(string_agg(note || '@' || to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ','), '') FROM ledger`)
	if err != nil {
		return nil, err
	}
	out := map[string]time.Time{}
	if s == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		note, ts, ok := strings.Cut(item, "@")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if !ok || err != nil {
			return nil, fmt.Errorf("ledger row %q: no commit timestamp (is track_commit_timestamp on?)", item)
		}
		out[note] = t
	}
	return out, nil
}

// writer inserts ledger rows, one transaction each, on its own connection, and remembers
// which commits were acknowledged and which ended in an error (committed or not).
type writer struct {
	mu        sync.Mutex
	acked     []string
	uncertain []string
	err       error
	stop      chan struct{}
	done      chan struct{}
}

// startWriter writes rows until limit rows are acknowledged (0: until stopped) or an error.
func startWriter(ctx context.Context, pg *harness.Postgres, next func() string, limit int) (*writer, error) {
	conn, err := pgx.Connect(ctx, pg.ConnString(harness.PGSuperuser, "postgres"))
	if err != nil {
		return nil, fmt.Errorf("ledger writer: %w", err)
	}
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		for limit == 0 || w.count() < limit {
			select {
			case <-w.stop:
				return
			default:
			}
			note := next()
			_, err := conn.Exec(context.Background(), "INSERT INTO ledger (note) VALUES ($1)", note)
			w.mu.Lock()
			if err != nil {
				w.uncertain, w.err = append(w.uncertain, note), err
				w.mu.Unlock()
				return
			}
			w.acked = append(w.acked, note)
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitCount waits until n rows are acknowledged, the writer ends, or timeout.
func (w *writer) waitCount(n int, timeout time.Duration) error {
	deadline := time.After(timeout)
	for w.count() < n {
		select {
		case <-w.done:
			if w.count() < n {
				return fmt.Errorf("ledger writer ended after %d of %d rows: %v", w.count(), n, w.err)
			}
		case <-deadline:
			return fmt.Errorf("ledger writer: %d of %d rows acknowledged after %s", w.count(), n, timeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// finish stops the writer and waits for its last statement to return.
func (w *writer) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// resolve reads the writer's rows back from pg (after finish): acknowledged rows must be
// there; rows whose commit ended in an error count when present.
func (w *writer) resolve(ctx context.Context, pg *harness.Postgres) ([]row, error) {
	ledger, err := readLedger(ctx, pg)
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, n := range w.acked {
		ts, ok := ledger[n]
		if !ok {
			return nil, fmt.Errorf("the server lost acknowledged row %s", n)
		}
		rows = append(rows, row{Note: n, TS: ts, Acked: true})
	}
	for _, n := range w.uncertain {
		if ts, ok := ledger[n]; ok {
			rows = append(rows, row{Note: n, TS: ts})
		}
	}
	return rows, nil
}

func TestOnPathEndsAnAncestorAtItsEarliestLaterSwitchPoint(t *testing.T) {
	m := newModel()
	// Timeline 4 restored along timeline 3 to a point of timeline 2's part (0/801CE8),
	// before timeline 3 branched (0/A0E0F8): PostgreSQL writes 3's history, then 3 0/801CE8.
	m.Timelines[4] = &timelineModel{ID: 4, History: walarchive.TimelineHistory{{Parent: 1, SwitchPoint: 0x700100}, {Parent: 2, SwitchPoint: 0xA0E0F8}, {Parent: 3, SwitchPoint: 0x801CE8}}}
	for _, tc := range []struct {
		tli  uint32
		lsn  walarchive.LSN
		want bool
	}{
		{1, 0x700000, true}, {1, 0x700200, false}, {2, 0x801000, true}, {2, 0x900000, false},
		{3, 0x900000, false}, {4, 0x900000, true}, {5, 0x100, false},
	} {
		if got := m.onPath(4, tc.tli, tc.lsn); got != tc.want {
			t.Errorf("onPath(4, %d, %s) = %v; want %v", tc.tli, tc.lsn, got, tc.want)
		}
	}
}
