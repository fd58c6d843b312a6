// Tests of strategy limits and their arithmetic (strategy.go).

package rollout

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in      string
		min     int
		want    limit
		wantErr bool
	}{
		{"2", 1, limit{n: 2}, false},
		{" 25% ", 1, limit{n: 25, percent: true}, false},
		{"0", 0, limit{n: 0}, false},
		{"0%", 0, limit{n: 0, percent: true}, false},
		{"100%", 1, limit{n: 100, percent: true}, false},
		{"0", 1, limit{}, true},
		{"0%", 1, limit{}, true},
		{"101%", 0, limit{}, true},
		{"-1", 0, limit{}, true},
		{"abc", 0, limit{}, true},
		{"2.5", 0, limit{}, true},
		{"%", 0, limit{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseLimit("max-parallel", tt.in, tt.min)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseLimit(%q) error = %v, want error %t", tt.in, err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "max-parallel") {
					t.Errorf("error %q should wrap ErrInvalid and name the flag", err)
				}
				return
			}
			if got != tt.want {
				t.Errorf("parseLimit(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestLimitArithmetic(t *testing.T) {
	tests := []struct {
		l            limit
		total        int
		wantParallel int
		// first failure count that exceeds the limit
		wantTrip int
	}{
		{limit{n: 1}, 10, 1, 2},
		{limit{n: 0}, 10, 1, 1},
		{limit{n: 25, percent: true}, 10, 2, 3}, // 2.5 nodes
		{limit{n: 20, percent: true}, 10, 2, 3}, // exactly 2
		{limit{n: 10, percent: true}, 5, 1, 1},  // 0.5 nodes: window at least 1
		{limit{n: 100, percent: true}, 7, 7, 8}, // never within the fleet
		{limit{n: 50, percent: true}, 3, 1, 2},  // 1.5
		{limit{n: 34, percent: true}, 3, 1, 2},  // 1.02
		{limit{n: 33, percent: true}, 3, 1, 1},  // 0.99
		{limit{n: 5}, 3, 5, 6},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s_of_%d", tt.l, tt.total), func(t *testing.T) {
			if got := tt.l.parallel(tt.total); got != tt.wantParallel {
				t.Errorf("parallel = %d, want %d", got, tt.wantParallel)
			}
			trip := 0
			for f := 0; f <= 100; f++ {
				if tt.l.exceeded(f, tt.total) {
					trip = f
					break
				}
			}
			if trip != tt.wantTrip {
				t.Errorf("first exceeding failure count = %d, want %d", trip, tt.wantTrip)
			}
		})
	}
}
