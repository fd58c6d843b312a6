package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// sourceServer serves size bytes to every connection, then closes it.
func sourceServer(t *testing.T, size int) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	data := bytes.Repeat([]byte("ferry"), size/5+1)[:size]
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write(data) // the client reads what it gets; that is what is tested
			}()
		}
	}()
	return lis.Addr().String()
}

func fetch(t *testing.T, addr string) (int, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		// A reset can beat the client's connect() to userspace.
		return 0, err
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	return int(n), err
}

func TestProxy(t *testing.T) {
	const size = 1 << 20
	target := sourceServer(t, size)
	tests := []struct {
		name      string
		cfg       Config
		want      int  // bytes the client gets
		reset     bool // the client sees an error
		minTime   time.Duration
		conns     int
		maxResets int64
	}{
		{name: "untouched", cfg: Config{}, want: size},
		{name: "reset after 100000 bytes", cfg: Config{Faults: ResetEvery(100000)}, want: 100000, reset: true},
		{name: "random reset", cfg: Config{Faults: ResetBetween(1000, 2000, 1)}, want: -1, reset: true},
		{name: "stall", cfg: Config{Faults: func(int) Faults { return Faults{StallAfter: 4096, StallFor: 200 * time.Millisecond} }}, want: size, minTime: 200 * time.Millisecond},
		{name: "rate cap", cfg: Config{Rate: 4 << 20}, want: size, minTime: 200 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Target = target
			p := New(t, tc.cfg)
			start := time.Now()
			n, err := fetch(t, p.Addr())
			took := time.Since(start)
			if tc.reset {
				var ne *net.OpError
				if !errors.As(err, &ne) {
					t.Errorf("client error %v, want a connection reset", err)
				}
				if p.Resets() != 1 {
					t.Errorf("%d resets, want 1", p.Resets())
				}
			} else if err != nil {
				t.Errorf("client error %v", err)
			}
			// What the proxy sent before a reset is exact; the client may
			// get less of it, since a reset discards what it had not read.
			sent := int(p.Bytes())
			switch {
			case tc.want >= 0 && sent != tc.want:
				t.Errorf("proxy sent %d bytes, want %d", sent, tc.want)
			case tc.want < 0 && (sent < 1000 || sent > 2000):
				t.Errorf("proxy sent %d bytes, want between 1000 and 2000", sent)
			case !tc.reset && n != sent:
				t.Errorf("client got %d bytes, proxy sent %d", n, sent)
			case tc.reset && n > sent:
				t.Errorf("client got %d bytes, more than the %d the proxy sent", n, sent)
			}
			if took < tc.minTime {
				t.Errorf("took %v, want at least %v", took, tc.minTime)
			}
			if p.Conns() != 1 {
				t.Errorf("proxy counts %d connections, want 1", p.Conns())
			}
		})
	}
}
