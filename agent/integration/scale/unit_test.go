package scale

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    int64
		wantErr bool
	}{
		{"plain", "4242 (ferry-controller) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 9 0 1000 0 0", 1000, false},
		{"name with spaces and parens", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 0 0", 11, false},
		{"no closing paren", "7 (abc R 1", 0, true},
		{"too few fields", "7 (abc) R 1 2 3", 0, true},
		{"not a number", "7 (abc) R 1 7 7 0 -1 0 0 0 0 0 x 6 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStatCPU: err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseStatCPU = %d ticks, want %d", got, tt.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    Memory
		wantErr bool
	}{
		{"process", "Name:\tferry\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n", Memory{RSS: 100 << 20, PeakRSS: 200 << 20, Threads: 9}, false},
		{"kernel thread", "Name:\tkthreadd\nThreads:\t1\n", Memory{Threads: 1}, true},
		{"bad unit", "VmHWM:\t2 MB\nVmRSS:\t1 MB\n", Memory{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.status))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStatus: err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("parseStatus = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMachineStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	busy, total, err := parseMachineStat([]byte("cpu  100 5 50 800 40 3 2 0 70 0\ncpu0 1 2 3 4\n"))
	if err != nil {
		t.Fatal(err)
	}
	if busy != 160 || total != 1000 {
		t.Errorf("busy, total = %d, %d; want 160, 1000 (idle and iowait idle, guest already in user)", busy, total)
	}
	if _, _, err := parseMachineStat([]byte("intr 1 2 3\n")); err == nil {
		t.Error("a stat file without the cpu line parsed")
	}
}

// The readers work on this very process: they are what the benchmark
// trusts for its figures.
func TestProcSelf(t *testing.T) {
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	cpu, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if cpu <= 0 || cpu > time.Hour {
		t.Errorf("ProcCPU(self) = %v after spinning, want a small positive duration", cpu)
	}
	m, err := ProcMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS < 1<<20 || m.PeakRSS < m.RSS || m.Threads < 1 {
		t.Errorf("ProcMemory(self) = %+v, want RSS of at least 1 MiB, a peak not below it, threads", m)
	}
	busy, total, err := MachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if busy <= 0 || total < busy {
		t.Errorf("MachineCPU = %v busy of %v", busy, total)
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := Summarize(d)
	want := Durations{N: 100, P50: 50 * time.Millisecond, P90: 90 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Errorf("Summarize(1..100ms) = %+v, want %+v", got, want)
	}
	if got := Summarize([]time.Duration{7}); got.P50 != 7 || got.P99 != 7 || got.Max != 7 {
		t.Errorf("Summarize of one sample = %+v", got)
	}
	if got := Summarize(nil); got != (Durations{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
}

func TestParseMetrics(t *testing.T) {
	body := strings.Join([]string{
		"# HELP ferry_heartbeats_received_total Heartbeats received from agents.",
		"# TYPE ferry_heartbeats_received_total counter",
		"ferry_heartbeats_received_total 12345",
		`ferry_nodes{group="scale",state="healthy"} 5000`,
		"go_goroutines 30012",
		"go_memstats_heap_inuse_bytes 4.185e+08",
		"",
	}, "\n")
	got := parseMetrics(body)
	want := map[string]float64{"ferry_heartbeats_received_total": 12345, "go_goroutines": 30012, "go_memstats_heap_inuse_bytes": 4.185e8}
	if len(got) != len(want) {
		t.Errorf("parseMetrics = %v, want %v (labelled samples skipped)", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
