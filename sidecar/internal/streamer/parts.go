package streamer

import "sync"

// maxPartsInFlight is how many tail parts may be uploading at once. A synchronous commit
// then waits for the part holding its WAL, not for the parts before it to be sent one
// after another: on a store a round trip away, parts issued while others fly overlap
// their round trips. Four is what the store takes without queueing on this kind of
// machine (see make bench) and what walarchive tolerates as uploads in flight.
const maxPartsInFlight = 4

// partPipe is the uploader's record of the tail parts in flight, in the order they were
// issued. Parts land in any order; the run they extend, and the acknowledgement, move only
// through parts that landed with every part before them (as TCP acknowledges a stream).
// A part that fails drops every part issued after it from the record: their bytes go up
// again from the end of the stored run, and their own landing then moves nothing.
type partPipe struct {
	mu       sync.Mutex
	flights  []*flight
	goroutes int // uploads running, including dropped ones
	err      error
}

// flight is one part in flight.
type flight struct {
	seg        *segment
	start, end uint64
	landed     bool
	dropped    bool
}

// issue records a part of seg, [start, end), as started.
func (p *partPipe) issue(seg *segment, start, end uint64) *flight {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := &flight{seg: seg, start: start, end: end}
	p.flights = append(p.flights, f)
	p.goroutes++
	return f
}

// land records that f's upload ended (err nil: stored) and returns the parts that now
// extend the stored run, in order.
func (p *partPipe) land(f *flight, err error) (done []*flight) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.goroutes--
	if f.dropped {
		return nil
	}
	if err != nil {
		// Drop f and everything issued after it; keep the first error for the backoff.
		for i, g := range p.flights {
			if g == f {
				for _, h := range p.flights[i:] {
					h.dropped = true
				}
				p.flights = p.flights[:i]
				break
			}
		}
		if p.err == nil {
			p.err = err
		}
		return nil
	}
	f.landed = true
	for len(p.flights) > 0 && p.flights[0].landed {
		done = append(done, p.flights[0])
		p.flights = p.flights[1:]
	}
	return done
}

// issuedEnd is where the last part of seg still on record ends (0: none).
func (p *partPipe) issuedEnd(seg *segment) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.flights) - 1; i >= 0; i-- {
		if p.flights[i].seg == seg {
			return p.flights[i].end
		}
	}
	return 0
}

// full reports whether no more parts may start.
func (p *partPipe) full() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.goroutes >= maxPartsInFlight
}

// busy reports whether any part is on record or uploading.
func (p *partPipe) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.flights) > 0 || p.goroutes > 0
}

// takeError returns and clears the error of a failed part.
func (p *partPipe) takeError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.err
	p.err = nil
	return err
}
