// Package facts detects what the agent reports about its host: OS, arch,
// host name, kernel, CPUs, load averages and free disk space (of the file
// systems the agent writes to).
package facts

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Detect returns the host's facts.
func Detect() *ferryv1.Facts {
	cpus := uint32(runtime.NumCPU()) //nolint:gosec // G115: a CPU count is positive and far below 2^32.
	f := &ferryv1.Facts{Os: runtime.GOOS, Arch: runtime.GOARCH, Cpus: cpus}
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
// system holding path (0 if unknown).
func DiskFree(path string) uint64 {
	free, _, _ := Space(path)
	return free
}

// Space returns the bytes available to unprivileged users on the file
// system holding path, and its size.
func Space(path string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	bsize := uint64(st.Bsize) //nolint:gosec // G115: a block size is positive.
	return st.Bavail * bsize, st.Blocks * bsize, nil
}

// Disks returns the space on the file systems the agent writes to: its
// state dir (where downloads are staged), the install root and each
// installed archive's destination (host paths), one entry per file system
// naming what it holds, so a full state dir shows apart from a full
// install destination. A path that does not exist yet counts on the file
// system of its nearest existing parent; one that cannot be examined is
// left out.
func Disks(stateDir, root string, dests []string) []*ferryv1.DiskSpace {
	type use struct{ path, what string }
	uses := []use{{stateDir, "state dir"}, {root, UseRoot}}
	for _, d := range dests {
		uses = append(uses, use{d, d})
	}
	var out []*ferryv1.DiskSpace
	byDev := map[uint64]*ferryv1.DiskSpace{}
	for _, u := range uses {
		path := existing(u.path)
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			continue
		}
		dev := uint64(st.Dev) //nolint:unconvert // Dev is a uint32 on some Linux platforms (mips).
		if d, ok := byDev[dev]; ok {
			d.Uses = append(d.Uses, u.what)
			continue
		}
		free, total, err := Space(path)
		if err != nil {
			continue
		}
		d := &ferryv1.DiskSpace{Path: u.path, Uses: []string{u.what}, FreeBytes: free, TotalBytes: total}
		byDev[dev] = d
		out = append(out, d)
	}
	return out
}

// UseRoot names the install root in a DiskSpace's Uses.
const UseRoot = "install root"

// FreeFor is the free space Disks found for the file system holding use
// (0 if none).
func FreeFor(disks []*ferryv1.DiskSpace, use string) uint64 {
	for _, d := range disks {
		if slices.Contains(d.GetUses(), use) {
			return d.GetFreeBytes()
		}
	}
	return 0
}

// existing returns path or its nearest parent that exists.
func existing(path string) string {
	for {
		if _, err := os.Stat(path); err == nil {
			return path
		}
		parent := filepath.Dir(path)
		if parent == path {
			return path
		}
		path = parent
	}
}
