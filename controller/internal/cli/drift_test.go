package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestDriftSummaryAndLines(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC))
	if got := driftSummary(nil); got != "" {
		t.Errorf("no report: %q", got)
	}
	clean := &ferryv1.DriftReport{CheckedAt: at, Checked: 2}
	if got := driftSummary(clean); got != "" {
		t.Errorf("no drift: %q", got)
	}
	if got := strings.Join(driftLines(clean), "\n"); got != "checked 2026-12-02 07:00:00Z (sizes, modes and times; packages checked: 2): no drift" {
		t.Errorf("clean lines %q", got)
	}
	if got := driftLines(nil); len(got) != 1 || got[0] != "not checked yet" {
		t.Errorf("nil lines %q", got)
	}
	d := &ferryv1.DriftReport{CheckedAt: at, Checked: 5, Full: true}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		d.Packages = append(d.Packages, &ferryv1.PackageDrift{Name: n, Version: "1", Changed: 2, Examples: []string{"/opt/" + n + "/x: missing"}})
	}
	if got, want := driftSummary(d), "DRIFT: a 1 (2 changed), b 1 (2 changed), c 1 (2 changed), and 2 more"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	lines := driftLines(d)
	if !strings.Contains(lines[0], "(full, with hashes; packages checked: 5):") || lines[1] != "  a 1: 2 changed since Ferry installed it" || lines[2] != "    /opt/a/x: missing" {
		t.Errorf("lines %q", lines)
	}
}
