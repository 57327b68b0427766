package history

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

// boundaryTimeout bounds the WAL writing of a boundary step.
const boundaryTimeout = 3 * time.Minute

// boundaries is issue 19's "slow store at segment boundaries": WAL is written across
// 3 + N%4 segment boundaries while the archive is listed again and again, in this process
// (the timeline graph's Reach along the live timeline, as list and verify read ranges) and
// with `kcbackup list --json`. From the segment the server was in when the step began, no
// listing may show a hole (WALEnd.Missing, or a window with "hole") that is not one: every
// byte of that WAL is the sidecar's to upload and none is lost.
//
// On s3 the sidecar is restarted for the step behind a proxy that holds every upload of a
// complete segment for 100 ms * (1 + N%5) and lets the rest through: the next segment's tail
// would land first if the sidecar did not wait for the complete one. On file:// the store
// cannot be slowed: the listing is polled during heavy writes.
func (w *world) boundaries(s step) error {
	if err := w.waitArchived(); err != nil {
		return err
	}
	a, err := w.archive()
	if err != nil {
		return err
	}
	segSize := a.SegmentSize()
	startLSN, err := w.flushLSN()
	if err != nil {
		return err
	}
	startSeg := startLSN.SegmentNo(segSize)
	crossings := 3 + s.N%4
	holesBefore, err := w.liveHoleWindows()
	if err != nil {
		return err
	}
	// Step 1 (s3): the sidecar behind a proxy slowing complete segments.
	var proxy *slowProxy
	if w.minio != nil {
		delay := time.Duration(1+s.N%5) * 100 * time.Millisecond
		if proxy, err = startSlowProxy(w.minio.Endpoint(), delay); err != nil {
			return err
		}
		defer proxy.Close()
		if err := w.sc.Stop(time.Minute); err != nil {
			w.logf("  sidecar stop: %v", err)
		}
		if err := w.startSidecar(w.pg, "AWS_ENDPOINT_URL_S3="+proxy.URL()); err != nil {
			return err
		}
		w.logf("  the sidecar now stores through a proxy holding complete segments %s", delay)
	}
	// Step 2: poll the listing while WAL is written.
	stop := make(chan struct{})
	var polls, lists atomic.Int64
	var mu sync.Mutex
	var seen error
	record := func(err error) {
		mu.Lock()
		if seen == nil {
			seen = err
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := w.pollReach(a, startSeg); err != nil {
				record(err)
				return
			}
			polls.Add(1)
			time.Sleep(2 * time.Millisecond) // the machine is shared: a listing, not a spin
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			holes, err := w.liveHoleWindows()
			if err == nil && holes > holesBefore {
				err = fail("f: a listing never shows a hole that is not one", "kcbackup list --json shows %d windows of live timeline %d ending at a hole (%d before the step) while WAL from segment %X on was being uploaded", holes, w.m.Live, holesBefore, startSeg)
			}
			if err != nil {
				record(err)
				return
			}
			lists.Add(1)
		}
	}()
	wr, err := startWriter(w.ctx, w.pg, w.nextNote, 0)
	if err != nil {
		close(stop)
		wg.Wait()
		return err
	}
	werr := w.fillSegments(startLSN, uint64(crossings)*segSize)
	// Step 3: keep polling until the archive holds all of it, then stop.
	if werr == nil {
		werr = w.waitArchived()
	}
	close(stop)
	wg.Wait()
	wr.finish()
	if err := w.settle(wr, werr); err != nil {
		return err
	}
	end, _ := w.flushLSN()
	if seen != nil {
		return seen
	}
	if polls.Load() == 0 {
		return fmt.Errorf("boundary: the archive was never listed")
	}
	held := ""
	if proxy != nil {
		held = fmt.Sprintf(", %d complete-segment uploads held by the proxy", proxy.held.Load())
	}
	w.tally.add("boundary-listings", int(polls.Load()+lists.Load()))
	w.logf("  boundary: WAL from %s to %s (%d segment boundaries) listed %d times in process and %d with list --json%s: no hole", startLSN, end, end.SegmentNo(segSize)-startSeg, polls.Load(), lists.Load(), held)
	// Step 4 (s3): back to the store directly.
	if proxy != nil {
		if err := w.sc.Stop(time.Minute); err != nil {
			w.logf("  sidecar stop: %v", err)
		}
		return w.startSidecar(w.pg)
	}
	return nil
}

// fillSegments writes filler rows until the server's WAL is n bytes past from.
func (w *world) fillSegments(from walarchive.LSN, n uint64) error {
	deadline := time.Now().Add(boundaryTimeout)
	for {
		at, err := w.flushLSN()
		if err != nil {
			return err
		}
		if uint64(at) >= uint64(from)+n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("boundary: WAL reached only %s of %s + %d bytes within %s", at, from, n, boundaryTimeout)
		}
		if err := w.exec("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 1500) g"); err != nil {
			return err
		}
	}
}

// pollReach lists the archive once and checks the live timeline's path from segment
// fromSeg: its WAL may end (a partial, or uploads in flight) but never at a hole.
func (w *world) pollReach(a *walarchive.Archive, fromSeg uint64) error {
	g, err := a.ReadGraph(w.ctx)
	if err != nil {
		return fmt.Errorf("boundary: read the archive's graph: %w", err)
	}
	p, err := g.Path(w.m.Live)
	if err != nil {
		return fmt.Errorf("boundary: path of live timeline %d: %w", w.m.Live, err)
	}
	end := g.Reach(p, fromSeg)
	if end.Missing != "" {
		return fail("f: a listing never shows a hole that is not one", "Graph.Reach of live timeline %d from segment %X reports %s missing (end %s, last segment %X, partial %v, in flight %v) while the sidecar uploads it",
			w.m.Live, fromSeg, end.Missing, end.End, end.LastSegment, end.Partial, end.InFlight)
	}
	return nil
}

// liveHoleWindows counts the windows of the live timeline that `kcbackup list --json`
// shows ending at a hole.
func (w *world) liveHoleWindows() (int, error) {
	out, stderr, code := w.kcbackup(cliTimeout, nil, "list", "--storage", w.url, "--json")
	if code != 0 {
		return 0, fail("list: the catalog reads the archive", "list --json exited %d: %s", code, stderr)
	}
	var c struct {
		Windows []struct {
			Timeline uint32 `json:"timeline"`
			Hole     bool   `json:"hole"`
		} `json:"windows"`
	}
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		return 0, fmt.Errorf("list --json: %w: %s", err, out)
	}
	n := 0
	for _, win := range c.Windows {
		if win.Timeline == w.m.Live && win.Hole {
			n++
		}
	}
	return n, nil
}

// completeSegment matches the path of a request storing a complete WAL segment.
var completeSegment = regexp.MustCompile(`/wal/[0-9A-F]{8}/[0-9A-F]{24}$`)

// slowProxy is an HTTP proxy to an S3 endpoint that holds each request storing a complete
// WAL segment (PUT, or POST completing a multipart upload) for a fixed delay.
type slowProxy struct {
	ln    net.Listener
	srv   *http.Server
	held  atomic.Int64
	delay time.Duration
}

func startSlowProxy(endpoint string, delay time.Duration) (*slowProxy, error) {
	target, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("slow proxy: endpoint %q: %w", endpoint, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &slowProxy{ln: ln, delay: delay}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // the client signed the proxy's host
	}}
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodPut || r.Method == http.MethodPost) && completeSegment.MatchString(r.URL.Path) {
			p.held.Add(1)
			time.Sleep(p.delay)
		}
		rp.ServeHTTP(rw, r)
	})}
	go p.srv.Serve(ln)
	return p, nil
}

// URL is the proxy's endpoint.
func (p *slowProxy) URL() string { return "http://" + p.ln.Addr().String() }

// Close stops the proxy.
func (p *slowProxy) Close() { p.srv.Close() }
