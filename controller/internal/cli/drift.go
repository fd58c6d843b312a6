package cli

import (
	"fmt"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// driftSummary is a node's drift for one table cell, e.g. "DRIFT: go
// 1.20.3 (3 changed), myapp 2 (1 changed)"; "" when its last check found
// nothing (or it reported none). The agent's report is untrusted: the
// controller bounded it, and it is printed as text only.
func driftSummary(d *ferryv1.DriftReport) string {
	if len(d.GetPackages()) == 0 {
		return ""
	}
	var parts []string
	for k, p := range d.GetPackages() {
		if k == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(d.GetPackages())-k))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %s (%d changed)", p.GetName(), p.GetVersion(), p.GetChanged()))
	}
	return "DRIFT: " + strings.Join(parts, ", ")
}

// driftLines is a node's drift in full, one line each, for a node's own
// page (ferryctl node show): when it was checked, then each package and
// the differences the agent named.
func driftLines(d *ferryv1.DriftReport) []string {
	if d == nil {
		return []string{"not checked yet"}
	}
	how := "sizes, modes and times"
	if d.GetFull() {
		how = "full, with hashes"
	}
	head := fmt.Sprintf("checked %s (%s; packages checked: %d)", d.GetCheckedAt().AsTime().Format("2006-01-02 15:04:05Z07:00"), how, d.GetChecked())
	if len(d.GetPackages()) == 0 {
		return []string{head + ": no drift"}
	}
	lines := []string{head + ":"}
	for _, p := range d.GetPackages() {
		lines = append(lines, fmt.Sprintf("  %s %s: %d changed since Ferry installed it", p.GetName(), p.GetVersion(), p.GetChanged()))
		for _, e := range p.GetExamples() {
			lines = append(lines, "    "+e)
		}
	}
	return append(lines, "  reinstall with: ferryctl rollout --group GROUP --package NAME@VERSION (an intact node reports unchanged; a drifted one is repaired)")
}
