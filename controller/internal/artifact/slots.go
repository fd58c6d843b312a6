package artifact

import (
	"container/list"
	"context"
	"sync"
)

// slots is a semaphore whose size can change while it is in use (a
// reload of --max-downloads). Waiters are served in arrival order, each
// woken alone, so a queue of thousands of agents costs one wake-up per
// freed slot. Shrinking never interrupts a holder: the surplus drains as
// downloads finish.
type slots struct {
	mu      sync.Mutex
	limit   int
	active  int
	waiters list.List // of chan struct{}, closed when granted
}

func newSlots(limit int) *slots { return &slots{limit: limit} }

// acquire takes a slot, waiting while ctx lasts.
func (s *slots) acquire(ctx context.Context) error {
	s.mu.Lock()
	if s.active < s.limit && s.waiters.Len() == 0 {
		s.active++
		s.mu.Unlock()
		return nil
	}
	granted := make(chan struct{})
	el := s.waiters.PushBack(granted)
	s.mu.Unlock()
	select {
	case <-granted:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-granted: // granted as ctx ended: hand it on
			s.active--
			s.grantLocked()
		default:
			s.waiters.Remove(el)
		}
		return ctx.Err()
	}
}

func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	s.grantLocked()
}

// setLimit changes the number of slots; waiters take new ones at once.
func (s *slots) setLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = n
	s.grantLocked()
}

func (s *slots) grantLocked() {
	for s.active < s.limit && s.waiters.Len() > 0 {
		el := s.waiters.Front()
		s.waiters.Remove(el)
		s.active++
		close(el.Value.(chan struct{}))
	}
}

// inUse is how many slots are held.
func (s *slots) inUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// size is the number of slots.
func (s *slots) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limit
}
