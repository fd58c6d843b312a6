// Package backoff holds the agent's reconnect and heartbeat timing
// formulas, shared by the agent and the fleet simulator that has to storm
// exactly as a real fleet would, and the mark for errors its retry loops
// must not retry (Permanent).
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

// Jitter scales d by a uniform factor in [1-f, 1+f].
func Jitter(rng *rand.Rand, d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rng.Float64()))
}
