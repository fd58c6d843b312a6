// Package proctest reads this process's memory use from /proc for tests
// and benchmarks that bound it (Linux only).
package proctest

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// RSS reads VmRSS and VmHWM (peak RSS) in bytes from /proc/self/status;
// both are -1 when it cannot be read.
func RSS() (rss, hwm int64) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// ResetPeak makes VmHWM start again from the current RSS (Linux >= 4.0),
// after a GC has returned what it can, and returns that RSS.
func ResetPeak() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	// Where the kernel refuses (older than 4.0, no permission), VmHWM keeps
	// the peak so far: a figure that reads high, never low.
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	rss, _ := RSS()
	return rss
}
