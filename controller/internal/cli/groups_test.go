package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestPrintGroup(t *testing.T) {
	since := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		g    *ferryv1.Group
		want []string
	}{
		{"no desired state", &ferryv1.Group{Name: "lab", NodeCount: 2, CatchUp: true, CatchUpParallel: 1},
			[]string{"group lab: 2 nodes, catch-up on, 1 at a time\n", "no desired versions yet"}},
		{"all caught up", &ferryv1.Group{Name: "production", NodeCount: 3, CatchUp: true, CatchUpParallel: 2,
			Desired: []*ferryv1.DesiredPackage{{Name: "go", Version: "1.20.3", RolloutId: "ro-1", SetBy: "admin/alice", Since: timestamppb.New(since)}}},
			[]string{"catch-up on, 2 at a time", "PACKAGE  VERSION  SET BY ROLLOUT  BY           SINCE", "go       1.20.3   ro-1            admin/alice  ", "every node is on the desired versions\n"}},
		{"behind", &ferryv1.Group{Name: "production", NodeCount: 3, CatchUp: false,
			Desired: []*ferryv1.DesiredPackage{{Name: "go", Version: "1.20.3", RolloutId: "ro-1", Since: timestamppb.New(since)}, {Name: "tool", Removed: true, RolloutId: "ro-2", Since: timestamppb.New(since)}},
			Behind: []*ferryv1.BehindNode{
				{NodeId: "n3", PackageName: "go", DesiredVersion: "1.20.3", Status: ferryv1.CatchUpStatus_CATCH_UP_STATUS_FAILED, RolloutId: "ro-9", Reason: "catch-up ro-9 failed at check: go version: exit status 1"},
				{NodeId: "n4", PackageName: "tool", InstalledVersion: "1.0", DesiredRemoved: true, Status: ferryv1.CatchUpStatus_CATCH_UP_STATUS_OFF, Reason: "catch-up is off"},
			}},
			[]string{"3 nodes, catch-up off\n", "tool     (removed)", "BEHIND\nNODE  PACKAGE  HAS  WANTS      STATUS  ROLLOUT  WHY\n",
				"n3    go       -    1.20.3     failed  ro-9     catch-up ro-9 failed at check: go version: exit status 1\n",
				"n4    tool     1.0  (removed)  off     -        catch-up is off\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := (&app{stdout: &out}).printGroup(tc.g); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// Against a real controller: refusals name the group and the fix.
func TestGroupCommands(t *testing.T) {
	cfg := startController(t)
	unknown := "Error: group \"nope\": not found: no enrolled node is in it and no rollout set its desired state; list nodes and their groups with `ferryctl nodes`\n"
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"show unknown", []string{"group", "show", "nope"}, unknown},
		{"set unknown", []string{"group", "set", "nope", "--catch-up=false"}, unknown},
		{"set nothing", []string{"group", "set", "staging"}, "Error: nothing to change: set --catch-up=true|false, --catch-up-parallel N or --retry\n"},
		{"set parallel 0", []string{"group", "set", "nope", "--catch-up-parallel", "0"}, "Error: group nope: --catch-up-parallel 0: want 1 to 1000 catch-up jobs at once\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, cfg, tc.args...)
			if code != 1 || errOut != tc.stderr {
				t.Errorf("exit %d, stderr %q; want exit 1, stderr %q", code, errOut, tc.stderr)
			}
		})
	}
}
