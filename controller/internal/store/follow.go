package store

import (
	"context"
	"time"
)

// followGap is the least time between two calls of a Follow callback: a
// burst of writes by other controllers (an enrollment wave, a rollout's
// job updates) costs a controller a bounded number of rereads, not one
// per write.
const followGap = 100 * time.Millisecond

// coalescer runs a function after triggers, one call at a time: the
// triggers that arrive while it runs (or within gap after) make one more
// call, not one each. A trigger is never lost: one after a call began
// reading is followed by another call.
type coalescer struct {
	gap  time.Duration
	kick chan struct{}
}

func newCoalescer(gap time.Duration) *coalescer {
	return &coalescer{gap: gap, kick: make(chan struct{}, 1)}
}

// trigger asks for a call; it never blocks.
func (c *coalescer) trigger() {
	select {
	case c.kick <- struct{}{}:
	default: // a call is due already
	}
}

// run calls fn after each trigger (coalesced) until ctx ends.
func (c *coalescer) run(ctx context.Context, fn func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		fn()
		if c.gap > 0 {
			t := time.NewTimer(c.gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}
