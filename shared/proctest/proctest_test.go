package proctest

import (
	"runtime"
	"testing"
)

func TestRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/self/status")
	}
	base := ResetPeak()
	if base <= 0 {
		t.Fatalf("ResetPeak = %d, want the current RSS", base)
	}
	// Touch 64 MiB so the peak rises above where it was reset.
	const size = 64 << 20
	b := make([]byte, size)
	for i := 0; i < size; i += 4096 {
		b[i] = 1
	}
	rss, hwm := RSS()
	runtime.KeepAlive(b)
	if rss <= 0 || hwm < rss {
		t.Fatalf("RSS = %d, peak %d; want 0 < rss <= peak", rss, hwm)
	}
	if hwm-base < size/2 {
		t.Errorf("peak rose by %d bytes after touching %d; want at least half", hwm-base, size)
	}
}
