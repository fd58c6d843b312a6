package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

// FullJitter is the agent's reconnect delay: a uniform delay in
// [base/2, min(max, base·2^attempt) + base/2), never past the cap, even
// for attempt counts that would overflow the shift.
func TestBackoff(t *testing.T) {
	const base, maxDelay = 500 * time.Millisecond, 30 * time.Second
	rng := rand.New(rand.NewPCG(1, 2))
	for _, attempt := range []int{0, 1, 2, 5, 6, 7, 20, 63, 1000} {
		ceil := maxDelay
		if attempt < 6 {
			ceil = base << attempt
		}
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for range 2000 {
			d := FullJitter(rng, base, maxDelay, attempt)
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < base/2 || hi >= ceil+base/2 {
			t.Errorf("attempt %d: delays in [%v, %v], want within [%v, %v)", attempt, lo, hi, base/2, ceil+base/2)
		}
		// Full jitter: the draws cover most of the range.
		if lo > base/2+ceil/10 || hi < base/2+ceil*9/10 {
			t.Errorf("attempt %d: delays in [%v, %v] do not spread over [%v, %v)", attempt, lo, hi, base/2, ceil+base/2)
		}
	}
}

func TestJitter(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		if d := Jitter(rng, 5*time.Second, 0.1); d < 4500*time.Millisecond || d > 5500*time.Millisecond {
			t.Fatalf("Jitter(5s, 0.1) = %v, want within 4.5s..5.5s", d)
		}
	}
}
