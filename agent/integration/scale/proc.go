package scale

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the kernel's clock tick for /proc CPU times (sysconf
// _SC_CLK_TCK), read from the auxiliary vector; 100 on every common Linux.
func userHZ() int64 {
	data, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	const atClkTck = 17
	for i := 0; i+16 <= len(data); i += 16 {
		k, v := binary.NativeEndian.Uint64(data[i:]), binary.NativeEndian.Uint64(data[i+8:])
		if k == atClkTck && v > 0 {
			return int64(v)
		}
	}
	return 100
}

// ProcCPU is the CPU time (user plus system, all threads) process pid has
// used since it started, from /proc/<pid>/stat.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of process %d: %w", pid, err)
	}
	ticks, err := parseStatCPU(data)
	if err != nil {
		return 0, fmt.Errorf("cpu time of process %d: %w", pid, err)
	}
	return time.Duration(ticks * int64(time.Second) / userHZ()), nil
}

// parseStatCPU returns utime+stime in clock ticks from a /proc/<pid>/stat
// line. The command name (field 2) may hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseStatCPU(stat []byte) (int64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat line %q", stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat line has %d fields after the command name, want at least 13", len(f))
	}
	u, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime %q: %w", f[11], err)
	}
	s, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime %q: %w", f[12], err)
	}
	return u + s, nil
}

// Memory is a process's resident memory, from /proc/<pid>/status.
type Memory struct {
	RSS     int64 // VmRSS, bytes
	PeakRSS int64 // VmHWM, bytes
	Threads int
}

// ProcMemory reads process pid's resident set.
func ProcMemory(pid int) (Memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("memory of process %d: %w", pid, err)
	}
	m, err := parseStatus(data)
	if err != nil {
		return Memory{}, fmt.Errorf("memory of process %d: %w", pid, err)
	}
	return m, nil
}

func parseStatus(data []byte) (Memory, error) {
	var m Memory
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.PeakRSS
		case "Threads":
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return m, fmt.Errorf("%s %q: %w", k, v, err)
			}
			m.Threads = n
			continue
		default:
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || unit != "kB" {
			return m, fmt.Errorf("%s %q: want a size in kB", k, v)
		}
		*dst = n << 10
		seen++
	}
	if seen < 2 {
		return m, fmt.Errorf("no VmRSS and VmHWM lines (a kernel thread, or the process exited)")
	}
	return m, nil
}

// MachineCPU is the busy and total CPU time of all cores since boot, from
// the first line of /proc/stat.
func MachineCPU() (busy, total time.Duration, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("machine cpu time: %w", err)
	}
	busyT, totalT, err := parseMachineStat(data)
	if err != nil {
		return 0, 0, fmt.Errorf("machine cpu time: %w", err)
	}
	hz := userHZ()
	return time.Duration(busyT * int64(time.Second) / hz), time.Duration(totalT * int64(time.Second) / hz), nil
}

// parseMachineStat sums the "cpu" line: idle and iowait are idle time,
// the rest busy.
func parseMachineStat(data []byte) (busy, total int64, err error) {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("first line %q is not the cpu summary", line)
	}
	// Fields: user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already counted in user, so only the first eight add up.
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("cpu field %d %q: %w", i+1, s, err)
		}
		total += v
		if i != 3 && i != 4 {
			busy += v
		}
	}
	return busy, total, nil
}
