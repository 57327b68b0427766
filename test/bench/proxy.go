package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// latencyProxy is a TCP proxy in front of MinIO that delays every byte by half the round
// trip it is set to, in each direction, so the store answers as one in another zone or
// region would: each request waits a full round trip, and a new connection one more for its
// handshake. Bandwidth is not limited beyond what a window of proxyWindow bytes in flight
// per direction allows (proxyWindow / RTT).
type latencyProxy struct {
	ln     net.Listener
	target string
	rtt    atomic.Int64 // nanoseconds
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// proxyWindow bounds the bytes the proxy holds per direction of a connection: 64 MiB,
// about a large TCP window, so a 60 ms round trip still carries about 1 GiB/s.
const proxyWindow = 64 << 20

// startLatencyProxy listens on a loopback port and forwards to target (host:port).
func startLatencyProxy(target string) (*latencyProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &latencyProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients connect to.
func (p *latencyProxy) Addr() string { return p.ln.Addr().String() }

// SetRTT sets the round trip added from now on (to bytes read after the call).
func (p *latencyProxy) SetRTT(d time.Duration) { p.rtt.Store(int64(d)) }

// RTT is the round trip currently added.
func (p *latencyProxy) RTT() time.Duration { return time.Duration(p.rtt.Load()) }

// Close stops accepting, closes every connection and waits for the forwarding to end.
func (p *latencyProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *latencyProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *latencyProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *latencyProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(client)
		}()
	}
}

// serve forwards one connection. The client's connect returns at once on loopback, so the
// handshake's round trip is added to its first bytes: across a real link they would leave
// one round trip after the connect began and reach the server half a round trip later.
func (p *latencyProxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	firstDue := time.Now().Add(p.RTT() * 3 / 2)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client, firstDue) }()
	go func() { defer wg.Done(); p.pipe(client, server, time.Time{}) }()
	wg.Wait()
}

// chunk is bytes read from one side, to be written to the other at due.
type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, each chunk half a round trip after it was read and not before
// notBefore, holding at most proxyWindow bytes. When src ends, dst's write side is closed
// once everything is written.
func (p *latencyProxy) pipe(dst, src net.Conn, notBefore time.Time) {
	queue := make(chan chunk, 1024)
	var held atomic.Int64
	space := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range queue {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			_, err := dst.Write(c.data)
			held.Add(-int64(len(c.data)))
			select {
			case space <- struct{}{}:
			default:
			}
			if err != nil {
				src.Close()
				for c := range queue { // drain so the reader never blocks
					held.Add(-int64(len(c.data)))
					select {
					case space <- struct{}{}:
					default:
					}
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
	}()
	buf := make([]byte, 256<<10)
	for {
		for held.Load() >= proxyWindow {
			<-space
		}
		n, err := src.Read(buf)
		if n > 0 {
			held.Add(int64(n))
			due := time.Now().Add(p.RTT() / 2)
			if due.Before(notBefore) {
				due = notBefore
			}
			queue <- chunk{data: append([]byte(nil), buf[:n]...), due: due}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			break
		}
	}
	close(queue)
	<-done
}
