package walarchive

import "testing"

// After timeline 2 forked from 1 at 0/5000000, a restore along timeline 2's path to a time
// before that fork ends timeline 2 at 0/3000000, inside timeline 1's part of the path:
// PostgreSQL writes "2 0/3000000" after "1 0/5000000" in timeline 3's history.
func TestTimelineHistoryWhoseSwitchPointsGoBack(t *testing.T) {
	h, err := ParseTimelineHistory([]byte("1\t0/5000000\tno recovery target specified\n\n2\t0/3000000\tbefore 2026-12-01 10:00:00+00\n"))
	if err != nil {
		t.Fatalf("PostgreSQL writes such histories; parse: %v", err)
	}
	for _, tc := range []struct {
		lsn  LSN
		want uint32
	}{{0x2000000, 1}, {0x2FFFFFF, 1}, {0x3000000, 3}, {0x4000000, 3}, {0x5800000, 3}} {
		if got := h.TimelineOf(tc.lsn, 3); got != tc.want {
			t.Errorf("TimelineOf(%s) = %d; want %d", tc.lsn, got, tc.want)
		}
	}
	p := WALPath{Target: 3, History: h, segSize: 1 << 24}
	for _, tc := range []struct {
		tli  uint32
		lsn  LSN
		want bool
	}{{1, 0x2000000, true}, {1, 0x3000000, true}, {1, 0x4000000, false}, {2, 0x5800000, false}, {2, 0x2000000, false}, {3, 0x3000100, true}} {
		if got := p.Contains(tc.tli, tc.lsn); got != tc.want {
			t.Errorf("Contains(timeline %d, %s) = %v; want %v", tc.tli, tc.lsn, got, tc.want)
		}
	}
	for seg, want := range map[uint64]uint32{2: 1, 3: 3, 4: 3, 5: 3} {
		if got := p.TimelineOfSegment(seg); got != want {
			t.Errorf("TimelineOfSegment(%d) = %d; want %d", seg, got, want)
		}
	}
	// The sidecar starts streaming after the pieces its archive holds: timeline 2's is empty.
	want := []PathPiece{{Timeline: 1, Begin: 0, End: 0x3000000}, {Timeline: 2, Begin: 0x5000000, End: 0x3000000}}
	if got := h.Path(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Path() = %+v; want %+v", got, want)
	}
	if _, err := ParseTimelineHistory([]byte("2\t0/5000000\n1\t0/6000000\n")); err == nil {
		t.Error("a history whose timelines do not increase was accepted")
	}
}
