// Package approxdur writes a duration the way an operator reads it in a
// message: "30 days", "5 hours", "2m5s", "1.5s". Clock skew and
// certificate ages span seconds to months, and "720h0m0s" makes a reader
// do the arithmetic.
package approxdur

import (
	"fmt"
	"time"
)

const day = 24 * time.Hour

// String rounds d's magnitude to what a reader needs: whole days from two
// days up, whole hours from two hours up, whole seconds from ten seconds
// up, tenths of a second below.
func String(d time.Duration) string {
	d = d.Abs()
	switch {
	case d >= 2*day:
		return fmt.Sprintf("%d days", (d+day/2)/day)
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", (d+time.Hour/2)/time.Hour)
	case d >= 10*time.Second:
		return d.Round(time.Second).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
