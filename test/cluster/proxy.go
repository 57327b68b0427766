package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections from an address on the node IP to a backend chosen per
// connection. The node has no kube-proxy: pods reach the API server (on loopback only) and
// the test's services through these.
type Proxy struct {
	Addr string // host:port it listens on
	l    net.Listener
	wg   sync.WaitGroup
}

// Listen starts a proxy on host (port chosen by the kernel) to whatever backend returns.
func Listen(host string, backend func(ctx context.Context) (string, error)) (*Proxy, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("proxy on %s: %w", host, err)
	}
	p := &Proxy{Addr: l.Addr().String(), l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				addr, err := backend(ctx)
				cancel()
				if err != nil {
					return
				}
				b, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return p, nil
}

// Port is the port the proxy listens on.
func (p *Proxy) Port() string {
	_, port, _ := net.SplitHostPort(p.Addr)
	return port
}

// Close stops accepting and ends the open connections' copying when their peers close.
func (p *Proxy) Close() error { return p.l.Close() }
