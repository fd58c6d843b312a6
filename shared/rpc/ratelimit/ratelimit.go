// Package ratelimit keeps a token bucket per key (a peer's address, a join
// token), for limits that must hold before a caller has authenticated.
// Buckets that have refilled are forgotten, so memory follows the keys
// seen within one refill time, not every key ever seen.
package ratelimit

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Rate is a bucket's shape: Burst calls at once, refilled at PerSecond.
type Rate struct {
	PerSecond float64
	Burst     int
}

// String says a rate as refusal messages do: "10 per second, bursts of 100".
func (r Rate) String() string {
	return fmt.Sprintf("%g per second, bursts of %d", r.PerSecond, r.Burst)
}

// Limiter is a token bucket per key. A nil *Limiter allows everything.
type Limiter struct {
	rate Rate
	now  func() time.Time

	mu      sync.Mutex
	buckets map[string]bucket
	sweepAt int // forget refilled buckets when the map grows to this size
}

type bucket struct {
	tokens float64
	at     time.Time
}

const minSweep = 1024

// New returns a limiter, or nil (no limit) when r allows no burst or no
// refill. now is the clock (time.Now when nil).
func New(r Rate, now func() time.Time) *Limiter {
	if r.Burst <= 0 || r.PerSecond <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{rate: r, now: now, buckets: map[string]bucket{}, sweepAt: minSweep}
}

// Allow takes a token from key's bucket and reports whether there was one.
func (l *Limiter) Allow(key string) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[key]
	if ok {
		b.tokens = l.refill(b, now)
	} else {
		b.tokens = float64(l.rate.Burst)
	}
	b.at = now
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.buckets[key] = b
	if len(l.buckets) >= l.sweepAt {
		l.sweep(now)
	}
	return allowed
}

func (l *Limiter) refill(b bucket, now time.Time) float64 {
	return min(float64(l.rate.Burst), b.tokens+now.Sub(b.at).Seconds()*l.rate.PerSecond)
}

// sweep forgets full buckets (a new bucket starts full, so nothing is
// lost) and sets the next sweep at twice what is left: amortized O(1).
func (l *Limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if l.refill(b, now) >= float64(l.rate.Burst) {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = max(2*len(l.buckets), minSweep)
}

// Peer is the key a remote address is limited under: the IP address, or
// for IPv6 the /64 it is in, since one host usually holds a whole /64.
// loopback reports a peer on this host.
func Peer(a net.Addr) (key string, loopback bool) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String(), false
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.WithZone("").Prefix(64)
		return p.String(), ip.IsLoopback()
	}
	return ip.String(), ip.IsLoopback()
}
