package history

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
)

// timeRange is one range of times a restore is promised to reach on a timeline's path.
type timeRange struct {
	Timeline uint32
	From, To time.Time
}

func (r timeRange) String() string {
	return fmt.Sprintf("tl%d[%s..%s]", r.Timeline, r.From.UTC().Format(time.RFC3339Nano), r.To.UTC().Format(time.RFC3339Nano))
}

// backupInfo is what the checker needs of a listed backup.
type backupInfo struct {
	ID        string
	Timeline  uint32
	StartLSN  walarchive.LSN
	StopLSN   walarchive.LSN
	StopTime  time.Time
	StartTime time.Time
}

// catalog is `kcbackup list --json` as the checker reads it.
type catalog struct {
	Backups   []backupInfo
	Timelines []uint32
	Ranges    []timeRange
	// Inverted lists reported ranges that end before they start (left out of Ranges).
	Inverted []timeRange
}

// parseCatalog reads `kcbackup list --json`. The recovery window is read by parseRanges,
// the one place that knows its shape.
func parseCatalog(out []byte) (catalog, error) {
	var raw struct {
		Backups   []apiclient.BackupInfo `json:"backups"`
		Timelines []uint32               `json:"timelines"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return catalog{}, fmt.Errorf("list --json: %w: %s", err, out)
	}
	var c catalog
	c.Timelines = raw.Timelines
	for _, b := range raw.Backups {
		start, err1 := walarchive.ParseLSN(b.StartLSN)
		stop, err2 := walarchive.ParseLSN(b.StopLSN)
		if err1 != nil || err2 != nil || b.Timeline == 0 {
			return catalog{}, fmt.Errorf("list --json: backup %s: bad timeline or LSNs (%d, %q, %q)", b.ID, b.Timeline, b.StartLSN, b.StopLSN)
		}
		c.Backups = append(c.Backups, backupInfo{ID: b.ID, Timeline: b.Timeline, StartLSN: start, StopLSN: stop, StartTime: b.StartTime, StopTime: b.StopTime})
	}
	var err error
	ranges, err := parseRanges(out, c.Timelines)
	if err != nil {
		return catalog{}, err
	}
	for _, r := range ranges {
		if r.To.Before(r.From) {
			c.Inverted = append(c.Inverted, r)
		} else {
			c.Ranges = append(c.Ranges, r)
		}
	}
	return c, nil
}

// parseRanges reads the recovery window of `kcbackup list --json`, in either shape:
//
//   - today's: "window": {"earliest", "latest"}, the newest timeline's only (the highest
//     of "timelines"), optionally with "timeline";
//   - a set of ranges per timeline: "windows" (or "ranges", or "window" as an array) of
//     {"timeline", "earliest"/"from", "latest"/"to"} or {"timeline", "ranges": [...]}.
//
// Anything else is an error naming what was found: the checker never guesses. A range
// that ends before it starts is returned as it is, for the caller to report.
func parseRanges(out []byte, timelines []uint32) ([]timeRange, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(out, &top); err != nil {
		return nil, fmt.Errorf("list --json: %w", err)
	}
	newest := uint32(0)
	if len(timelines) > 0 {
		newest = slices.Max(timelines)
	}
	var ranges []timeRange
	found := false
	for _, key := range []string{"window", "windows", "ranges", "recoveryWindows"} {
		msg, ok := top[key]
		if !ok || string(msg) == "null" {
			continue
		}
		found = true
		rs, err := decodeRangeValue(msg, newest)
		if err != nil {
			return nil, fmt.Errorf("list --json %q: %w: %s", key, err, msg)
		}
		ranges = append(ranges, rs...)
	}
	_ = found // no key at all means no window yet
	sort.Slice(ranges, func(i, j int) bool {
		if ranges[i].Timeline != ranges[j].Timeline {
			return ranges[i].Timeline < ranges[j].Timeline
		}
		return ranges[i].From.Before(ranges[j].From)
	})
	return ranges, nil
}

// decodeRangeValue decodes one object or an array of objects, each a range or a timeline
// with its ranges; tli is the timeline a range without one belongs to.
func decodeRangeValue(msg json.RawMessage, tli uint32) ([]timeRange, error) {
	var arr []json.RawMessage
	if err := json.Unmarshal(msg, &arr); err == nil {
		var out []timeRange
		for _, m := range arr {
			rs, err := decodeRangeValue(m, tli)
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
		}
		return out, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(msg, &obj); err != nil {
		return nil, fmt.Errorf("expected an object or an array of objects")
	}
	if m, ok := obj["timeline"]; ok {
		if err := json.Unmarshal(m, &tli); err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline %s: expected a positive number", m)
		}
	}
	if tli == 0 {
		return nil, fmt.Errorf("a range without a timeline and no timelines listed")
	}
	if m, ok := obj["ranges"]; ok {
		return decodeRangeValue(m, tli)
	}
	from, err := timeField(obj, "earliest", "from", "start")
	if err != nil {
		return nil, err
	}
	to, err := timeField(obj, "latest", "to", "end")
	if err != nil {
		return nil, err
	}
	return []timeRange{{Timeline: tli, From: from, To: to}}, nil
}

// timeField returns the first of names that holds an RFC 3339 time.
func timeField(obj map[string]json.RawMessage, names ...string) (time.Time, error) {
	for _, n := range names {
		m, ok := obj[n]
		if !ok {
			continue
		}
		var t time.Time
		if err := json.Unmarshal(m, &t); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("no time in any of %v", names)
}

// covered reports whether every instant of [from, to] (a single instant when they are
// equal) lies in the union of rs (of one timeline), allowing slack at the joins.
func covered(rs []timeRange, from, to time.Time, slack time.Duration) bool {
	rs = slices.Clone(rs)
	sort.Slice(rs, func(i, j int) bool { return rs[i].From.Before(rs[j].From) })
	at, started := from, false
	for _, r := range rs {
		if r.From.After(at.Add(slack)) {
			break
		}
		if r.To.Add(slack).Before(at) {
			continue // wholly before what is left to cover
		}
		started = true
		if r.To.After(at) {
			at = r.To
		}
		if !at.Add(slack).Before(to) {
			return true
		}
	}
	return started && !at.Add(slack).Before(to)
}

func TestParseRangesReadsBothWindowShapes(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339Nano) }
	for _, tc := range []struct {
		name string
		js   string
		want []timeRange
		err  bool
	}{
		{"none yet", `{"backups":[],"timelines":[]}`, nil, false},
		{"today's single window", `{"timelines":[1,2],"window":{"earliest":"` + ts(0) + `","latest":"` + ts(time.Hour) + `"}}`,
			[]timeRange{{2, t0, t0.Add(time.Hour)}}, false},
		{"ranges per timeline", `{"timelines":[1,2],"windows":[{"timeline":1,"ranges":[{"earliest":"` + ts(0) + `","latest":"` + ts(time.Minute) + `"},{"earliest":"` + ts(2*time.Minute) + `","latest":"` + ts(3*time.Minute) + `"}]},{"timeline":2,"ranges":[{"from":"` + ts(time.Hour) + `","to":"` + ts(2*time.Hour) + `"}]}]}`,
			[]timeRange{{1, t0, t0.Add(time.Minute)}, {1, t0.Add(2 * time.Minute), t0.Add(3 * time.Minute)}, {2, t0.Add(time.Hour), t0.Add(2 * time.Hour)}}, false},
		{"flat ranges", `{"timelines":[1],"window":[{"timeline":1,"earliest":"` + ts(0) + `","latest":"` + ts(time.Minute) + `"}]}`,
			[]timeRange{{1, t0, t0.Add(time.Minute)}}, false},
		{"no times", `{"timelines":[1],"window":{"begin":"x"}}`, nil, true},
		{"reversed", `{"timelines":[1],"window":{"earliest":"` + ts(time.Hour) + `","latest":"` + ts(0) + `"}}`, []timeRange{{1, t0.Add(time.Hour), t0}}, false},
		{"not an object", `{"timelines":[1],"window":"soon"}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tls struct {
				Timelines []uint32 `json:"timelines"`
			}
			json.Unmarshal([]byte(tc.js), &tls)
			got, err := parseRanges([]byte(tc.js), tls.Timelines)
			if tc.err {
				if err == nil {
					t.Fatalf("parseRanges = %v; want an error", got)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("parseRanges = %v, %v; want %v", got, err, tc.want)
			}
			for i := range got {
				if got[i].Timeline != tc.want[i].Timeline || !got[i].From.Equal(tc.want[i].From) || !got[i].To.Equal(tc.want[i].To) {
					t.Fatalf("range %d = %v; want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestCoveredNeedsTheWholeInterval(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	rs := []timeRange{{1, t0, t0.Add(time.Minute)}, {1, t0.Add(time.Minute), t0.Add(2 * time.Minute)}, {1, t0.Add(3 * time.Minute), t0.Add(4 * time.Minute)}}
	if !covered(rs, t0.Add(10*time.Second), t0.Add(110*time.Second), 0) {
		t.Fatal("an interval inside two joined ranges is covered")
	}
	if covered(rs, t0.Add(10*time.Second), t0.Add(170*time.Second), 0) {
		t.Fatal("an interval across a hole is not covered")
	}
	if covered(rs, t0.Add(-time.Second), t0.Add(10*time.Second), 0) {
		t.Fatal("an interval starting before the ranges is not covered")
	}
	if !covered(rs, t0.Add(30*time.Second), t0.Add(30*time.Second), 0) || covered(rs, t0.Add(150*time.Second), t0.Add(150*time.Second), 0) {
		t.Fatal("an instant is covered only inside a range")
	}
	if covered(nil, t0, t0, 0) || covered(rs, t0.Add(5*time.Minute), t0.Add(5*time.Minute), 0) {
		t.Fatal("an instant outside every range is not covered")
	}
}
