package streamer

import (
	"errors"
	"testing"
)

// Parts land in any order; the run moves only through parts that landed with every part
// issued before them.
func TestPartsAreAcknowledgedInTheOrderIssued(t *testing.T) {
	var p partPipe
	seg := &segment{}
	a, b, c := p.issue(seg, 0, 10), p.issue(seg, 10, 20), p.issue(seg, 20, 30)
	if got := p.issuedEnd(seg); got != 30 {
		t.Fatalf("issued end %d, want 30", got)
	}
	if done := p.land(c, nil); len(done) != 0 {
		t.Fatalf("the third part moved the run before the first two landed: %v", done)
	}
	if done := p.land(a, nil); len(done) != 1 || done[0].end != 10 {
		t.Fatalf("the first part landing moved the run to %v, want [0,10) only", done)
	}
	if done := p.land(b, nil); len(done) != 2 || done[1].end != 30 {
		t.Fatalf("the second part landing moved the run through %v, want through 30", done)
	}
	if p.busy() {
		t.Fatal("every part landed, yet the pipe is busy")
	}
}

// A part that fails drops every part issued after it: their landing moves nothing, and the
// bytes go up again from the end of the stored run.
func TestAFailedPartDropsTheLaterOnes(t *testing.T) {
	var p partPipe
	seg := &segment{}
	a, b, c := p.issue(seg, 0, 10), p.issue(seg, 10, 20), p.issue(seg, 20, 30)
	if p.full() != (maxPartsInFlight <= 3) {
		t.Fatalf("full() = %v with 3 of %d in flight", p.full(), maxPartsInFlight)
	}
	boom := errors.New("store down")
	if done := p.land(b, boom); done != nil {
		t.Fatalf("a failed part moved the run: %v", done)
	}
	if got := p.issuedEnd(seg); got != 10 {
		t.Fatalf("after the second part failed the next part starts at %d, want 10 (the first is still in flight)", got)
	}
	if done := p.land(c, nil); done != nil {
		t.Fatalf("a part issued after a failed one moved the run: %v", done)
	}
	if done := p.land(a, nil); len(done) != 1 || done[0].end != 10 {
		t.Fatalf("the part before the failed one moved the run to %v, want 10", done)
	}
	if err := p.takeError(); !errors.Is(err, boom) {
		t.Fatalf("takeError = %v, want the part's error", err)
	}
	if err := p.takeError(); err != nil {
		t.Fatalf("the error is reported twice: %v", err)
	}
	if p.busy() {
		t.Fatal("nothing is in flight, yet the pipe is busy")
	}
}
