package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// A burst of triggers while a call runs makes one more call, which sees
// the last state: never one call per trigger, never a lost write.
func TestCoalescerBurstMakesOneMoreCall(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var state atomic.Int64
	const burst = 1000
	seen := make(chan int64, burst+2)
	release := make(chan struct{})
	c := newCoalescer(0)
	done := make(chan struct{})
	first := true
	go func() {
		defer close(done)
		c.run(ctx, func() {
			seen <- state.Load()
			if first {
				first = false
				<-release // writes now land after this call read
			}
		})
	}()
	c.trigger()
	if got := <-seen; got != 0 {
		t.Fatalf("first call saw %d, want 0", got)
	}
	for range burst {
		state.Add(1)
		c.trigger()
	}
	close(release)
	if got := <-seen; got != burst {
		t.Fatalf("the call after the burst saw %d, want %d", got, burst)
	}
	cancel()
	<-done
	if n := len(seen); n != 0 {
		t.Errorf("%d more calls after the one for the burst of %d; want none", n, burst)
	}
}

// On etcd, a burst of writes by another controller is followed: the
// follower's calls are coalesced, and its last one sees the last write.
func TestEtcdFollowCoalescesABurst(t *testing.T) {
	a, b := twoControllers(t)
	ctx, cancel := context.WithCancel(t.Context())
	var calls atomic.Int32
	var last atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Follow(ctx, "tokens", func() {
			calls.Add(1)
			toks, err := b.Tokens()
			if err == nil {
				last.Store(int64(len(toks)))
			}
		})
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(200 * time.Millisecond) // let the watch start
	const burst = 100
	for i := range burst {
		if err := a.PutToken(TokenRecord{ID: fmt.Sprintf("t%03d", i), ExpiresAt: time.Now().Add(time.Hour)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); last.Load() != burst; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the follower's last call saw %d tokens after %d were written", last.Load(), burst)
		}
	}
	t.Logf("%d writes, %d calls of the follower", burst, calls.Load())
}
