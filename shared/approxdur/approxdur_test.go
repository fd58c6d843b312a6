package approxdur

import (
	"testing"
	"time"
)

func TestString(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{1540 * time.Millisecond, "1.5s"},
		{-1540 * time.Millisecond, "1.5s"},
		{125*time.Second + 400*time.Millisecond, "2m5s"},
		{119 * time.Minute, "1h59m0s"},
		{5*time.Hour + 29*time.Minute, "5 hours"},
		{47 * time.Hour, "47 hours"},
		{30*24*time.Hour + 13*time.Hour, "31 days"},
		{-10 * 24 * time.Hour, "10 days"},
	} {
		t.Run(tc.in.String(), func(t *testing.T) {
			if got := String(tc.in); got != tc.want {
				t.Errorf("String(%v) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
