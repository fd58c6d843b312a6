// Package bytesize formats byte counts for people: the agent's messages
// and ferryctl's tables say "98.3 MiB", not 103079215.
package bytesize

import "fmt"

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
