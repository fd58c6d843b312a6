// Package facts detects what the agent reports about its host: OS, arch,
// host name, kernel, CPUs, load averages and free disk space.
package facts

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Detect returns the host's facts.
func Detect() *ferryv1.Facts {
	f := &ferryv1.Facts{Os: runtime.GOOS, Arch: runtime.GOARCH, Cpus: uint32(runtime.NumCPU())}
	f.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	return f
}

// Load returns the 1, 5 and 15 minute load averages (zeros if unknown).
func Load() (l1, l5, l15 float64) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, 0, 0
	}
	fs := strings.Fields(string(b))
	if len(fs) < 3 {
		return 0, 0, 0
	}
	l1, _ = strconv.ParseFloat(fs[0], 64)
	l5, _ = strconv.ParseFloat(fs[1], 64)
	l15, _ = strconv.ParseFloat(fs[2], 64)
	return l1, l5, l15
}

// DiskFree returns the bytes available to unprivileged users on the file
// system holding path.
func DiskFree(path string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0
	}
	return st.Bavail * uint64(st.Bsize)
}
