package scale

import (
	"slices"
	"time"
)

// Durations summarises a sample of durations.
type Durations struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// Summarize returns the nearest-rank percentiles of d (it sorts d).
func Summarize(d []time.Duration) Durations {
	if len(d) == 0 {
		return Durations{}
	}
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(d))+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return Durations{N: len(d), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: d[len(d)-1]}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
