package ratelimit

import (
	"fmt"
	"net"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestLimiter(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := New(Rate{PerSecond: 2, Burst: 3}, c.now)
	take := func(key string, n int) (allowed int) {
		for range n {
			if l.Allow(key) {
				allowed++
			}
		}
		return allowed
	}
	if got := take("a", 5); got != 3 {
		t.Fatalf("a fresh bucket allowed %d of 5, want its burst of 3", got)
	}
	if got := take("b", 1); got != 1 {
		t.Fatalf("another key was refused: buckets are per key")
	}
	c.t = c.t.Add(time.Second) // two tokens back
	if got := take("a", 3); got != 2 {
		t.Fatalf("after 1s at 2/s allowed %d, want 2", got)
	}
	c.t = c.t.Add(time.Hour) // refills to the burst, no more
	if got := take("a", 5); got != 3 {
		t.Fatalf("after an hour allowed %d, want the burst of 3", got)
	}
}

func TestLimiterForgetsRefilledBuckets(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := New(Rate{PerSecond: 1, Burst: 1}, c.now)
	for i := range 10 * minSweep {
		l.Allow(fmt.Sprint(i))
		c.t = c.t.Add(10 * time.Millisecond)
	}
	// Each bucket refills within a second, 100 keys: the map must hold
	// about that, not every key ever seen.
	if n := len(l.buckets); n > minSweep {
		t.Fatalf("%d buckets kept for %d keys", n, 10*minSweep)
	}
}

func TestNilLimiterAllows(t *testing.T) {
	for _, r := range []Rate{{}, {PerSecond: 1}, {Burst: 1}} {
		if l := New(r, nil); l != nil || !l.Allow("x") {
			t.Errorf("New(%+v) = %v; want nil, allowing everything", r, l)
		}
	}
}

func TestPeer(t *testing.T) {
	cases := []struct {
		addr     net.Addr
		key      string
		loopback bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4000}, "192.0.2.7", false},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 4000}, "192.0.2.7", false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 4000}, "127.0.0.1", true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa::1"), Port: 4000}, "2001:db8:1:2::/64", false},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:bbbb::9"), Port: 5000}, "2001:db8:1:2::/64", false},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 4000}, "::/64", true},
	}
	for _, tc := range cases {
		t.Run(tc.addr.String(), func(t *testing.T) {
			key, loopback := Peer(tc.addr)
			if key != tc.key || loopback != tc.loopback {
				t.Errorf("Peer(%s) = %q, %v; want %q, %v", tc.addr, key, loopback, tc.key, tc.loopback)
			}
		})
	}
}
