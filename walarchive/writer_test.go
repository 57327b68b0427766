package walarchive

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
	"github.com/kcbackup/kcbackup/walarchive/storage/storagetest"
)

func TestContinuationOfRefusesACopyRestoredToAnEarlierPoint(t *testing.T) {
	hist := func(s ...TimelineSwitch) TimelineHistory { return TimelineHistory(s) }
	for _, tc := range []struct {
		name string
		srv  ServerPath
		tli  uint32
		end  LSN
		want string // "" = a continuation
	}{
		{"same timeline", ServerPath{Timeline: 1}, 1, 0x5000000, ""},
		{"promoted at the archive's end", ServerPath{2, hist(TimelineSwitch{Parent: 1, SwitchPoint: 0x5000100})}, 1, 0x5000100, ""},
		{"promoted past the archive's end", ServerPath{2, hist(TimelineSwitch{Parent: 1, SwitchPoint: 0x6000000})}, 1, 0x5000100, ""},
		{"copy restored to a mid-point", ServerPath{2, hist(TimelineSwitch{Parent: 1, SwitchPoint: 0x3000000})}, 1, 0x5000100, "copy of an earlier state"},
		{"grandchild through the writer's timeline", ServerPath{3, hist(TimelineSwitch{Parent: 1, SwitchPoint: 0x2000000}, TimelineSwitch{Parent: 2, SwitchPoint: 0x7000000})}, 2, 0x6000000, ""},
		{"old primary after a failover", ServerPath{Timeline: 1}, 2, 0x6000000, "was replaced"},
		{"a sibling branch", ServerPath{3, hist(TimelineSwitch{Parent: 1, SwitchPoint: 0x2000000})}, 2, 0x6000000, "not on the server's timeline 3's path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ContinuationOf(tc.srv, tc.tli, tc.end)
			if tc.want == "" && err != nil {
				t.Fatalf("refused a continuation: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWriterClaimLivesUntilItsLeaseLapsesOrIsReleased(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	c := &WriterClaim{Epoch: 3, Kind: ClaimWriter, WriterID: "a", ClaimedAt: t0}
	st := WriterState{Claim: c}
	if live, _ := st.Live(t0.Add(DefaultWriterTTL - time.Second)); !live {
		t.Fatal("a claim without a heartbeat lapsed before one TTL")
	}
	if live, _ := st.Live(t0.Add(DefaultWriterTTL + time.Second)); live {
		t.Fatal("a claim without a heartbeat outlived its TTL")
	}
	st.Lease = &WriterLease{Epoch: 3, WriterID: "a", RenewedAt: t0.Add(time.Minute), TTLSeconds: 10}
	if live, _ := st.Live(t0.Add(time.Minute + 9*time.Second)); !live {
		t.Fatal("renewed claim lapsed early")
	}
	if live, _ := st.Live(t0.Add(time.Minute + 11*time.Second)); live {
		t.Fatal("renewed claim outlived its TTL")
	}
	st.Lease.Released = true
	if live, _ := st.Live(t0.Add(time.Minute)); live {
		t.Fatal("a released claim still holds")
	}
	// A heartbeat of an older epoch (a fenced writer renewing late) does not keep a newer claim.
	st.Lease = &WriterLease{Epoch: 2, WriterID: "b", RenewedAt: t0.Add(time.Hour), TTLSeconds: 3600}
	if live, _ := st.Live(t0.Add(time.Hour)); live {
		t.Fatal("an older epoch's heartbeat kept claim 3 alive")
	}
	h := WriterState{Claim: &WriterClaim{Epoch: 4, Kind: ClaimHandover, Handover: &Handover{ParentTimeline: 1}}}
	if live, _ := h.Live(t0.Add(24 * time.Hour)); !live {
		t.Fatal("a hand-over lapsed: only the restored server may end it")
	}
}

func TestHandoverAcceptsOnlyTheRestoredServer(t *testing.T) {
	h := Handover{ParentTimeline: 1, FromLSN: 0x3000000, AfterTimeline: 2}
	ok := TimelineHistory{{Parent: 1, SwitchPoint: 0x3500000}}
	if err := h.Accepts(3, ok); err != nil {
		t.Fatalf("refused the restored server: %v", err)
	}
	for name, tc := range map[string]struct {
		tli  uint32
		hist TimelineHistory
	}{
		"still in recovery":            {1, nil},
		"a timeline the archive had":   {2, ok},
		"branched from another parent": {3, TimelineHistory{{Parent: 2, SwitchPoint: 0x3500000}}},
		"branched before the backup":   {3, TimelineHistory{{Parent: 1, SwitchPoint: 0x2000000}}},
	} {
		if err := h.Accepts(tc.tli, tc.hist); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClaimsAreNumberedAndARaceHasOneWinner(t *testing.T) {
	for name, st := range map[string]storage.Storage{"honoured": memory.New(), "ignored": storage.WithoutConditionalWrites(memory.New())} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			a, err := InitArchive(ctx, st, testIdentity(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.ProbeConditionalWrites(ctx); err != nil {
				t.Fatal(err)
			}
			first, err := a.Claim(ctx, 0, WriterClaim{Kind: ClaimWriter, WriterID: "w1", Timeline: 1})
			if err != nil || first.Epoch != 1 {
				t.Fatalf("first claim: %+v, %v", first, err)
			}
			if _, err := a.Claim(ctx, 0, WriterClaim{Kind: ClaimWriter, WriterID: "w2", Timeline: 1}); !errors.Is(err, ErrNotWriter) {
				t.Fatalf("a second claim of epoch 1: %v; want ErrNotWriter", err)
			}
			if err := a.CheckFenced(ctx, 1, "w1"); err != nil {
				t.Fatalf("holder of the newest claim is fenced: %v", err)
			}
			if _, err := a.HandOver(ctx, Handover{ParentTimeline: 1, AfterTimeline: 1}, "restore-host", "in-place restore"); err != nil {
				t.Fatal(err)
			}
			if err := a.CheckFenced(ctx, 1, "w1"); !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "hand-over") {
				t.Fatalf("after a hand-over the old writer: %v; want ErrFenced naming the hand-over", err)
			}
			ws, err := a.WriterState(ctx)
			if err != nil || ws.Epoch() != 2 || ws.Claim.Kind != ClaimHandover {
				t.Fatalf("writer state after hand-over: %+v, %v", ws.Claim, err)
			}
		})
	}
}

// On a store that ignores If-None-Match, an immutable object is never replaced by other
// bytes (docs/reliability.md 31): the history of timeline 2 written by a restored copy does not
// replace production's.
func TestImmutableObjectsSurviveAStoreThatIgnoresConditionalWrites(t *testing.T) {
	ctx := context.Background()
	st := storage.WithoutConditionalWrites(memory.New())
	a, err := InitArchive(ctx, st, testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.ProbeConditionalWrites(ctx); err != nil || c != ConditionalIgnored {
		t.Fatalf("probe: %v, %v; want ignored", c, err)
	}
	first := TimelineHistory{{Parent: 1, SwitchPoint: 0x5000000, Reason: "production"}}.Format()
	second := TimelineHistory{{Parent: 1, SwitchPoint: 0x3000000, Reason: "copy"}}.Format()
	if err := a.PutHistory(ctx, 2, first); err != nil {
		t.Fatal(err)
	}
	if err := a.PutHistory(ctx, 2, second); !errors.Is(err, ErrConflict) {
		t.Fatalf("a different history of timeline 2: %v; want ErrConflict", err)
	}
	if err := a.PutHistory(ctx, 2, first); err != nil {
		t.Fatalf("the same history again: %v", err)
	}
	h, err := a.History(ctx, 2)
	if err != nil || len(h) != 1 || h[0].SwitchPoint != 0x5000000 {
		t.Fatalf("stored history %v, %v; want production's", h, err)
	}
	// Unprobed, the archive checks first too.
	b := &Archive{Storage: st, Identity: a.Identity}
	if _, err := b.PutImmutable(ctx, HistoryKey(2), bytes.NewReader(second)); !errors.Is(err, ErrConflict) {
		t.Fatalf("unprobed archive replaced the history: %v", err)
	}
	// Racing writers of different bytes: the check before the write narrows the race, the
	// writer claim prevents it; at least the stored copy is one writer's, whole.
	errs := storagetest.Race(4, func(i int) error {
		_, err := a.PutImmutable(ctx, SegmentKey(1, 9, seg1M), bytes.NewReader(bytes.Repeat([]byte{byte(i + 1)}, seg1M)))
		return err
	})
	var got bytes.Buffer
	if _, err := a.Get(ctx, SegmentKey(1, 9, seg1M), &got); err != nil || got.Len() != seg1M {
		t.Fatalf("raced segment unreadable: %v (%d bytes, errors %v)", err, got.Len(), errs)
	}
}

func TestProbeFindsAStoreThatHonoursConditionalWrites(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	a, err := InitArchive(ctx, st, testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.ProbeConditionalWrites(ctx); err != nil || c != ConditionalHonoured {
		t.Fatalf("probe: %v, %v; want honoured", c, err)
	}
	if objs, _ := st.List(ctx, probePrefix); len(objs) != 0 {
		t.Fatalf("the probe left %v", objs)
	}
}

func TestTimelineEndReadsTheLastPartialsLength(t *testing.T) {
	ctx := context.Background()
	a, err := InitArchive(ctx, memory.New(), testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := a.TimelineEnd(ctx, 1); ok || err != nil {
		t.Fatalf("empty timeline: ok=%v err=%v", ok, err)
	}
	if _, err := a.PutImmutable(ctx, SegmentKey(1, 3, seg1M), bytes.NewReader(make([]byte, seg1M))); err != nil {
		t.Fatal(err)
	}
	if end, _, _ := a.TimelineEnd(ctx, 1); end != SegmentStartLSN(4, seg1M) {
		t.Fatalf("end after a complete segment %s", end)
	}
	if _, err := a.Put(ctx, PartialKey(1, 4, seg1M), bytes.NewReader(make([]byte, 1234))); err != nil {
		t.Fatal(err)
	}
	if end, _, _ := a.TimelineEnd(ctx, 1); end != SegmentStartLSN(4, seg1M)+1234 {
		t.Fatalf("end after a partial %s; want %s", end, SegmentStartLSN(4, seg1M)+1234)
	}
}

// The writer log is readable by a sidecar given only an encrypted archive's recipients,
// and verify reads it as the plain object it is.
func TestWriterLogIsReadableWithOnlyTheRecipients(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	full, err := InitArchive(ctx, st, testIdentity(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := full.Claim(ctx, 0, WriterClaim{Kind: ClaimWriter, WriterID: "w1", Timeline: 1}); err != nil {
		t.Fatal(err)
	}
	if err := full.RenewLease(ctx, WriterLease{Epoch: 1, WriterID: "w1", Timeline: 1, RenewedAt: time.Now(), TTLSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenArchive(ctx, st, recipientsOnly(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := ro.WriterState(ctx)
	if err != nil || ws.Epoch() != 1 || ws.Lease == nil {
		t.Fatalf("recipient-only reader: %+v, %v", ws, err)
	}
	rep, err := full.Verify(ctx, nil)
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("verify: %+v, %v", rep.Problems, err)
	}
}
