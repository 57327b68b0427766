package standby

import (
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

func TestParseProbeRow(t *testing.T) {
	for _, c := range []struct {
		row  []string
		want ServerState
		bad  bool
	}{
		{row: []string{"t", "0/3000060"}, want: ServerState{InRecovery: true, WALPosition: 0x3000060}},
		{row: []string{"f", "1/0"}, want: ServerState{WALPosition: 1 << 32}},
		{row: []string{"true", "0/0"}, bad: true},
		{row: []string{"t", "nonsense"}, bad: true},
		{row: []string{"t"}, bad: true},
	} {
		row := make([][]byte, len(c.row))
		for i, v := range c.row {
			row[i] = []byte(v)
		}
		got, err := ParseProbeRow(row)
		if c.bad != (err != nil) || got != c.want {
			t.Errorf("ParseProbeRow(%q) = %+v, %v; want %+v (error: %v)", c.row, got, err, c.want, c.bad)
		}
	}
}

func TestParseSlotRow(t *testing.T) {
	for _, c := range []struct {
		row  []string
		want SlotState
		lost bool
		bad  bool
	}{
		{row: []string{"physical", "0/5000000", "reserved"}, want: SlotState{Exists: true, Type: "physical", RestartLSN: 0x5000000, WALStatus: "reserved"}},
		{row: []string{"physical", "", "lost"}, want: SlotState{Exists: true, Type: "physical", WALStatus: "lost"}, lost: true},
		{row: []string{"physical", "0/5000000", "lost"}, want: SlotState{Exists: true, Type: "physical", RestartLSN: 0x5000000, WALStatus: "lost"}, lost: true},
		{row: []string{"logical", "0/1", ""}, want: SlotState{Exists: true, Type: "logical", RestartLSN: 1}},
		{row: []string{"other", "0/1", ""}, bad: true},
		{row: []string{"physical", "x", ""}, bad: true},
		{row: []string{"physical", "0/1"}, bad: true},
	} {
		row := make([][]byte, len(c.row))
		for i, v := range c.row {
			row[i] = []byte(v)
		}
		got, err := ParseSlotRow(row)
		if c.bad != (err != nil) || got != c.want || (err == nil && got.Lost() != c.lost) {
			t.Errorf("ParseSlotRow(%q) = %+v (lost %v), %v; want %+v (lost %v, error: %v)", c.row, got, got.Lost(), err, c.want, c.lost, c.bad)
		}
	}
}

// The slot moves forward to the archive's end, never back, and not while the archive
// knows nothing.
func TestAdvanceToTheArchivesEndOnlyForward(t *testing.T) {
	for _, c := range []struct {
		restart, end walarchive.LSN
		archived     bool
		want         walarchive.LSN
		move         bool
	}{
		{restart: 0x1000000, end: 0x3000000, archived: true, want: 0x3000000, move: true},
		{restart: 0x3000000, end: 0x3000000, archived: true},
		{restart: 0x4000000, end: 0x3000000, archived: true},
		{restart: 0x1000000, end: 0x3000000, archived: false},
	} {
		got, move := AdvanceTo(c.restart, c.end, c.archived)
		if got != c.want || move != c.move {
			t.Errorf("AdvanceTo(%s, %s, %v) = %s, %v; want %s, %v", c.restart, c.end, c.archived, got, move, c.want, c.move)
		}
	}
}

func TestNextPhaseFollowsTheServer(t *testing.T) {
	ttl := 30 * time.Second
	for _, c := range []struct {
		name       string
		cur        Phase
		answered   bool
		inRecovery bool
		silentFor  time.Duration
		want       Phase
	}{
		{"a standby found at start stands by", PhaseUnknown, true, true, 0, PhaseStandby},
		{"a primary found at start archives", PhaseUnknown, true, false, 0, PhasePrimary},
		{"a promoted standby archives", PhaseStandby, true, false, 0, PhasePrimary},
		{"a demoted primary stands by", PhasePrimary, true, true, 0, PhaseStandby},
		{"a primary restarting keeps its streamer", PhasePrimary, false, false, ttl - time.Second, PhasePrimary},
		{"a primary silent for a TTL releases the archive", PhasePrimary, false, false, ttl, PhaseUnknown},
		{"a silent standby stays a standby", PhaseStandby, false, false, time.Hour, PhaseStandby},
		{"no answer yet: nothing runs", PhaseUnknown, false, false, time.Hour, PhaseUnknown},
	} {
		if got := Next(c.cur, c.answered, c.inRecovery, c.silentFor, ttl); got != c.want {
			t.Errorf("%s: Next = %s; want %s", c.name, got, c.want)
		}
	}
}

func TestCompleteEndIgnoresPartialsAndOtherTimelines(t *testing.T) {
	seg := uint64(16 << 20)
	objs := []storage.ObjectInfo{
		{Key: walarchive.SegmentKey(2, 3, seg)},
		{Key: walarchive.SegmentKey(2, 4, seg)},
		{Key: walarchive.PartialKey(2, 5, seg)},
		{Key: walarchive.PartKey(2, 5, seg, 0, 4096)},
		{Key: walarchive.SegmentKey(1, 9, seg)},
	}
	if end, ok := completeEnd(objs, 2, seg); !ok || end != walarchive.SegmentStartLSN(5, seg) {
		t.Fatalf("completeEnd = %s, %v; want the end of segment 4", end, ok)
	}
	if _, ok := completeEnd(objs[2:4], 2, seg); ok {
		t.Fatal("a timeline with only a partial has no complete end")
	}
}

func TestParseHotStandby(t *testing.T) {
	for v, want := range map[string]bool{"on": true, "off": false} {
		if st, err := ParseHotStandby(v); err != nil || st.InRecovery != want {
			t.Errorf("ParseHotStandby(%q) = %+v, %v; want in recovery %v", v, st, err, want)
		}
	}
	if _, err := ParseHotStandby("true"); err == nil {
		t.Error(`ParseHotStandby("true") succeeded; want an error`)
	}
}
