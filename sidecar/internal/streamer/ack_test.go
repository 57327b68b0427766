package streamer

import (
	"context"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

func TestAckPositionsNeverRunAheadOfTheArchive(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		archived, received, floor walarchive.LSN
		write, flush              walarchive.LSN
	}{
		{"nothing archived yet after the slot's restart point", 0x1000000, 0x1000000, 0x1000028, 0, 0},
		{"archived below the floor: the slot's restart point is not claimed", 0x1000100, 0x1000200, 0x1000800, 0, 0},
		{"archived exactly at the floor", 0x1000800, 0x1000900, 0x1000800, 0x1000800, 0x1000800},
		{"received ahead of archived: write is not the received position", 0x2000000, 0x2300000, 0x1000000, 0x2000000, 0x2000000},
		{"archived never reported beyond what this connection received", 0x3000000, 0x2800000, 0x1000000, 0x2800000, 0x2800000},
		{"fresh session at LSN 0", 0, 0, 0, 0, 0},
	} {
		w, f := ackPositions(tc.archived, tc.received, tc.floor)
		if w != tc.write || f != tc.flush {
			t.Errorf("%s: write %s flush %s; want %s %s", tc.name, w, f, tc.write, tc.flush)
		}
	}
}

func TestAckTrackerMovesOnlyForwardAndOnlyForTheCurrentSession(t *testing.T) {
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	tr := newAckTracker(func() time.Time { return now })
	g1 := tr.startSession(0x1000000, 0x1000028)
	if w, f := tr.positions(0x1000000); w != 0 || f != 0 {
		t.Fatalf("before anything is archived past the floor: %s %s; want 0 0", w, f)
	}
	tr.noteReceived(0x1800000)
	now = now.Add(2 * time.Second)
	if lag := tr.lagSeconds(); lag != 2 {
		t.Fatalf("lag %v; want 2 s for the unarchived bytes", lag)
	}
	if a, moved := tr.advance(0x1400000, g1); !moved || a != 0x1400000 {
		t.Fatalf("advance within the session: %s %v", a, moved)
	}
	select {
	case <-tr.moved:
	default:
		t.Fatal("no signal that the archived position moved")
	}
	if _, moved := tr.advance(0x1200000, g1); moved {
		t.Fatal("the archived position went backwards")
	}
	if w, f := tr.positions(0x1800000); w != 0x1400000 || f != 0x1400000 {
		t.Fatalf("positions %s %s; want the archived 0/1400000", w, f)
	}
	// A fenced writer's (or an older session's) upload moves nothing.
	tr.invalidate()
	if _, moved := tr.advance(0x1800000, g1); moved || tr.archivedLSN() != 0x1400000 {
		t.Fatalf("an upload of an ended generation moved the archived position to %s", tr.archivedLSN())
	}
	g3 := tr.startSession(0x2000000, 0x2000000)
	if g3 == g1 || tr.archivedLSN() != 0x2000000 {
		t.Fatalf("new session: generation %d archived %s", g3, tr.archivedLSN())
	}
	if tr.advance(0x2100000, g3); tr.lagSeconds() != 0 {
		t.Fatalf("lag %v after everything received is archived", tr.lagSeconds())
	}
}

// A move of the archived position interrupts the receive in progress (so a synchronous
// commit is acknowledged at once), and one that happened between receives ends the next
// receive at once; take reports each move once.
func TestAckKickInterruptsTheReceive(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	moved := make(chan struct{}, 1)
	k := newAckKick(ctx, moved)
	rctx, done := k.receiveContext(ctx, time.Hour)
	moved <- struct{}{}
	<-rctx.Done() // a receive blocked for an hour ends when the position moves
	done()
	if !k.take() {
		t.Fatal("the move was not reported")
	}
	if k.take() {
		t.Fatal("one move was reported twice")
	}
	<-k.moved // the first move's signal
	moved <- struct{}{}
	<-k.moved
	rctx, done = k.receiveContext(ctx, time.Hour)
	defer done()
	select {
	case <-rctx.Done():
	default:
		t.Fatal("a move between receives did not end the next receive at once")
	}
}
