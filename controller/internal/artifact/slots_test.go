package artifact

import (
	"context"
	"testing"
	"time"
)

// acquireAsync runs acquire on its own goroutine; granted and waiting
// read its outcome (the waits only bound a test that would otherwise hang
// or notice a grant that must not happen).
func acquireAsync(ctx context.Context, s *slots) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.acquire(ctx) }()
	return ch
}

func granted(ch <-chan error) bool {
	select {
	case err := <-ch:
		return err == nil
	case <-time.After(5 * time.Second):
		return false
	}
}

func waiting(ch <-chan error) bool {
	select {
	case err := <-ch:
		_ = err // returned at all: not waiting
		return false
	case <-time.After(50 * time.Millisecond):
		return true
	}
}

func waitWaiters(t *testing.T, s *slots, n int) {
	t.Helper()
	for range 500 {
		s.mu.Lock()
		got := s.waiters.Len()
		s.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("waiters never reached %d", n)
}

func TestSlotsResize(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	a := acquireAsync(ctx, s)
	waitWaiters(t, s, 1)
	b := acquireAsync(ctx, s)
	waitWaiters(t, s, 2)
	if !waiting(a) {
		t.Fatal("a second acquire did not wait with one slot")
	}
	// Growing the limit lets both waiters in at once.
	s.setLimit(3)
	if !granted(a) || !granted(b) || s.inUse() != 3 {
		t.Fatalf("after growing to 3: %d in use, want 3", s.inUse())
	}
	// Shrinking interrupts no holder; newcomers wait until the surplus
	// has drained below the new limit.
	s.setLimit(1)
	c := acquireAsync(ctx, s)
	waitWaiters(t, s, 1)
	s.release()
	s.release()
	if !waiting(c) {
		t.Fatal("an acquire got a slot while 1 of 1 was still held")
	}
	s.release()
	if !granted(c) || s.inUse() != 1 {
		t.Fatalf("after the holders left: %d in use, want 1", s.inUse())
	}
	// A waiter whose context ends leaves the queue and takes nothing.
	cctx, cancel := context.WithCancel(ctx)
	d := acquireAsync(cctx, s)
	waitWaiters(t, s, 1)
	cancel()
	if err := <-d; err == nil {
		t.Fatal("a cancelled acquire got a slot")
	}
	s.release()
	if s.inUse() != 0 || s.waiters.Len() != 0 {
		t.Errorf("%d in use, %d waiting; want none", s.inUse(), s.waiters.Len())
	}
}

func TestSetLimitsDefaults(t *testing.T) {
	d := NewDownloader(DownloaderConfig{})
	if n, p, st := d.Limits(); n != DefaultMaxDownloads || p != DefaultMaxDownloadsPerNode || st != DefaultStallTimeout {
		t.Errorf("defaults %d %d %v", n, p, st)
	}
	d.SetLimits(3, 1, time.Second)
	if n, p, st := d.Limits(); n != 3 || p != 1 || st != time.Second {
		t.Errorf("after SetLimits: %d %d %v", n, p, st)
	}
	if _, err := d.enter("n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.enter("n1"); err == nil {
		t.Error("a second download of one node was let in at a per-node limit of 1")
	}
}
