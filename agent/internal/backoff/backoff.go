// Package backoff holds the agent's reconnect and heartbeat timing
// formulas, shared by the agent and the fleet simulator that has to storm
// exactly as a real fleet would, and the mark for errors its retry loops
// must not retry (Permanent).
//
// The reconnect rule: after each stream that ends, the agent waits
// FullJitter(base, max, attempt), where attempt counts the attempts since
// the last established session (0 right after one). A session is
// established once the controller's welcome arrived and the stream then
// stayed up for MinSession. So a flapping link (a stream that lives a few
// seconds each time) reconnects after [base/2, 3·base/2) every time, a
// controller that is down sees delays double up to max, and a controller
// that welcomes each stream and drops it at once is not hammered either.
package backoff

import (
	"math/rand/v2"
	"time"
)

// FullJitter is "full jitter" exponential backoff: a uniform delay below
// min(max, base·2^attempt), plus base/2, so a fleet reconnecting after a
// controller restart spreads out instead of arriving at once.
func FullJitter(rng *rand.Rand, base, maxDelay time.Duration, attempt int) time.Duration {
	ceil := base << min(attempt, 20)
	if ceil > maxDelay || ceil <= 0 {
		ceil = maxDelay
	}
	return time.Duration(rng.Int64N(int64(ceil))) + base/2
}

// MinSession is how long a stream must stay up after the controller's
// welcome for its session to count as established. Below it, a welcomed
// stream counts as one more failed attempt: a controller that accepts and
// at once drops every stream (a crash loop, a proxy cutting each
// connection) would otherwise have its whole fleet redial every base/2 to
// 3·base/2.
const MinSession = time.Second

// Jitter scales d by a uniform factor in [1-f, 1+f].
func Jitter(rng *rand.Rand, d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rng.Float64()))
}
