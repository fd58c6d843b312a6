// Package faultproxy is a TCP proxy for tests that breaks a link the way
// real ones break: it resets a connection after a number of bytes (fixed
// or random), stalls it for a while, and caps the rate. Faults act on the
// bytes from the server to the client, which is where a download lives;
// the other direction is forwarded untouched.
package faultproxy

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Faults says what happens to one connection. The zero value forwards it
// untouched.
type Faults struct {
	// ResetAfter resets the connection (a TCP RST both ways) once this
	// many bytes went from the server to the client; 0 means never.
	ResetAfter int64
	// StallAfter and StallFor stop forwarding for StallFor once StallAfter
	// bytes went from the server to the client; StallFor 0 means no stall.
	StallAfter int64
	StallFor   time.Duration
}

// Config configures a Proxy.
type Config struct {
	// Target is the server's address.
	Target string
	// Faults is asked for each new connection, numbered from 0; nil
	// means none.
	Faults func(conn int) Faults
	// Rate caps the bytes per second from the server to the client, over
	// all connections together; 0 means no cap.
	Rate int64
}

// Proxy forwards connections from its own loopback address to the target.
type Proxy struct {
	cfg    Config
	lis    net.Listener
	conns  atomic.Int64
	resets atomic.Int64
	bytes  atomic.Int64

	mu   sync.Mutex
	next time.Time // rate cap: when the next byte may go
	open map[net.Conn]struct{}
	wg   sync.WaitGroup
}

// New starts a proxy on a loopback port; it stops when the test ends.
func New(tb testing.TB, cfg Config) *Proxy {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{cfg: cfg, lis: lis, open: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// ResetEvery resets every connection after n bytes.
func ResetEvery(n int64) func(int) Faults {
	return func(int) Faults { return Faults{ResetAfter: n} }
}

// ResetBetween resets each connection after a number of bytes drawn from
// [lo, hi], from a generator seeded with seed.
func ResetBetween(lo, hi int64, seed uint64) func(int) Faults {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(int) Faults {
		mu.Lock()
		defer mu.Unlock()
		return Faults{ResetAfter: lo + rng.Int64N(hi-lo+1)}
	}
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Conns is how many connections the proxy accepted.
func (p *Proxy) Conns() int64 { return p.conns.Load() }

// Resets is how many connections it reset.
func (p *Proxy) Resets() int64 { return p.resets.Load() }

// Bytes is how many bytes it delivered from servers to clients.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

func (p *Proxy) close() {
	p.lis.Close()
	p.mu.Lock()
	for c := range p.open {
		c.Close()
	}
	p.open = nil // no new connections
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open == nil {
		return false
	}
	p.open[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	if p.open != nil {
		delete(p.open, c)
	}
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for n := 0; ; n++ {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		var f Faults
		if p.cfg.Faults != nil {
			f = p.cfg.Faults(n)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(c, f)
		}()
	}
}

func (p *Proxy) forward(client net.Conn, f Faults) {
	if !p.track(client) {
		client.Close()
		return
	}
	defer p.untrack(client)
	server, err := net.Dial("tcp", p.cfg.Target)
	if err != nil {
		return
	}
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)
	go func() {
		// Client to server is forwarded untouched until either side ends.
		_, _ = io.Copy(server, client)
		if tc, ok := server.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()

	buf := make([]byte, 32<<10)
	var sent int64
	stalled := f.StallFor <= 0
	for {
		want := int64(len(buf))
		if f.ResetAfter > 0 {
			want = min(want, f.ResetAfter-sent)
		}
		if !stalled {
			want = min(want, f.StallAfter-sent)
		}
		if want > 0 {
			n, err := server.Read(buf[:want])
			if n > 0 {
				p.pace(n)
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
				sent += int64(n)
				p.bytes.Add(int64(n))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					if tc, ok := client.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
				}
				return
			}
		}
		if !stalled && sent >= f.StallAfter {
			stalled = true
			time.Sleep(f.StallFor)
		}
		if f.ResetAfter > 0 && sent >= f.ResetAfter {
			p.resets.Add(1)
			reset(client)
			reset(server)
			return
		}
	}
}

// pace waits until n more bytes fit under the rate cap.
func (p *Proxy) pace(n int) {
	if p.cfg.Rate <= 0 {
		return
	}
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(time.Duration(float64(n) / float64(p.cfg.Rate) * float64(time.Second)))
	p.mu.Unlock()
	time.Sleep(at.Sub(now))
}

// reset closes c with a TCP RST instead of a FIN, as a broken link or a
// middlebox dropping state does.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a plain close, should the socket refuse
	}
	c.Close()
}
