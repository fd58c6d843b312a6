// Package bytesize formats byte counts for people: the agent's messages
// and ferryctl's tables say "98.3 MiB", not 103079215.
package bytesize

import (
	"fmt"
	"strconv"
	"strings"
)

// IEC formats n with binary units: 512 B, 1.5 KiB, 98.3 MiB.
func IEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// units are the suffixes Parse accepts, decimal and binary.
var units = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// Units lists what Parse accepts, for messages.
const Units = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"

// Parse reads a byte count: a whole number of bytes or a number with a
// unit (2GiB, 500MB, 256KiB).
func Parse(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > (1<<63)/mult {
		return 0, fmt.Errorf("%q is not a size: write a number of bytes, or a number with a unit (%s), e.g. 2GiB", s, Units)
	}
	return v * mult, nil
}
