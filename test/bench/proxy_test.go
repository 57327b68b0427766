package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers every connection with what it reads, until the client closes its side.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestLatencyProxyDelaysEachRoundTripAndKeepsTheBytes(t *testing.T) {
	p, err := startLatencyProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const rtt = 40 * time.Millisecond
	p.SetRTT(rtt)
	payload := make([]byte, 3<<20)
	rand.Read(payload)

	began := time.Now()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// First exchange: the handshake's round trip and the request's.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	var got [4]byte
	if _, err := io.ReadFull(c, got[:]); err != nil || string(got[:]) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	if took := time.Since(began); took < 2*rtt {
		t.Fatalf("connect and first exchange took %s; want at least two round trips (%s)", took, 2*rtt)
	}
	// A second exchange on the same connection: one round trip.
	began = time.Now()
	c.Write([]byte("pong"))
	if _, err := io.ReadFull(c, got[:]); err != nil || string(got[:]) != "pong" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	if took := time.Since(began); took < rtt {
		t.Fatalf("an exchange took %s; want at least one round trip (%s)", took, rtt)
	}
	// Bulk bytes arrive intact and in order, and the close passes through.
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("echoed %d of %d bytes (%v); want them all, equal", len(back), len(payload), err)
	}
}
