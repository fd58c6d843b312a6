package store

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestJobLogKeepsTheTailAndCountsEverything(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ferry.db"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	line := strings.Repeat("x", 1023) + "\n"
	var want uint64
	for i := 0; i < 300; i++ { // 300 KiB > MaxJobLog
		if err := s.AppendJobLog("ro-1", "n1", line, time.Now()); err != nil {
			t.Fatal(err)
		}
		want += uint64(len(line))
	}
	text, total, err := s.JobLog("ro-1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if total != want {
		t.Errorf("total = %d, want %d", total, want)
	}
	if len(text) > MaxJobLog || !strings.HasPrefix(text, truncatedMarker) || !strings.HasSuffix(text, line) {
		t.Errorf("stored log: %d bytes, prefix %q", len(text), text[:40])
	}
}
