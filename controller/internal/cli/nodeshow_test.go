package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// node show over the API: a freshly enrolled node with its group and
// labels, no packages and no jobs yet; JSON in the flags' words.
func TestNodeShowEnrolled(t *testing.T) {
	cfg := startController(t)
	tok := createToken(t, cfg, "--group", "staging", "--label", "dc=east")
	if _, err := newEnroller(t, dialAdmin(t, cfg)).enroll(tok, "n1", nil); err != nil {
		t.Fatal(err)
	}
	mustRun(t, cfg, []string{"node", "show", "n1"},
		"Node:         n1\n", "Group:        staging\n", "Labels:       dc=east\n", "State:        pending: enrolled, never connected",
		"Stream:       disconnected\n", "Installed:\n  nothing installed by Ferry\n", "Recent jobs:\n  none:", "Last error:   none\n")
	mustRun(t, cfg, []string{"-o", "json", "node", "show", "n1"}, `"id": "n1"`, `"state": "pending"`, `"group": "staging"`)
	mustRun(t, cfg, []string{"-o", "yaml", "node", "show", "n1"}, "node:\n  id: n1\n", "  state: pending\n")
	mustRun(t, cfg, []string{"nodes", "--selector", "dc=east"}, "\nn1  ")
	mustRun(t, cfg, []string{"nodes", "--selector", "group=staging"}, "\nn1  ")
	if out := mustRun(t, cfg, []string{"nodes", "--package", "go"}); strings.Contains(out, "n1") {
		t.Errorf("nodes --package go lists n1, which has nothing installed:\n%s", out)
	}
	mustRun(t, cfg, []string{"nodes", "--not-package", "go"}, "\nn1  ")
}

// The text form of a node with history: the rollout that installed each
// package, the jobs newest first, the last failure with its logs command.
func TestPrintNode(t *testing.T) {
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	ts := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }
	failed := &ferryv1.NodeJobRecord{RolloutId: "ro-b", PackageName: "go", PackageVersion: "1.21.0", JobKind: ferryv1.JobKind_JOB_KIND_INSTALL,
		Job: &ferryv1.NodeJob{NodeId: "n1", Outcome: ferryv1.NodeOutcome_NODE_OUTCOME_FAILED, FailedStep: "check", Message: "go version printed go1.20.3", FinishedAt: ts(time.Minute)}}
	resp := &ferryv1.GetNodeResponse{
		Node: &ferryv1.Node{Id: "n1", Group: "production", Labels: map[string]string{"group": "production", "dc": "east"},
			State: ferryv1.NodeState_NODE_STATE_HEALTHY, StateReason: "heartbeat 2s old; gossip alive", Connected: true, Address: "10.0.0.5:40000",
			LastHeartbeat: ts(2 * time.Second), GossipState: "alive", AgentVersion: "0.4.0", Uptime: durationpb.New(90 * time.Minute), Load1: 0.25,
			Facts:     &ferryv1.Facts{Os: "linux", Arch: "amd64", Hostname: "web1", Cpus: 2},
			Installed: []*ferryv1.InstalledPackage{{Name: "go", Version: "1.20.3", InstalledAt: ts(time.Hour), PreviousVersion: "1.19.0"}},
			Drift:     &ferryv1.DriftReport{CheckedAt: ts(time.Minute), Checked: 1, Packages: []*ferryv1.PackageDrift{{Name: "go", Version: "1.20.3", Changed: 1, Examples: []string{"/usr/local/go/bin/go: modified since install"}}}}},
		Jobs: []*ferryv1.NodeJobRecord{failed, {RolloutId: "ro-a", PackageName: "go", PackageVersion: "1.20.3", JobKind: ferryv1.JobKind_JOB_KIND_INSTALL,
			Job: &ferryv1.NodeJob{NodeId: "n1", Outcome: ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED, FinishedAt: ts(time.Hour)}}},
		LastFailure: failed,
		InstalledBy: map[string]string{"go@1.20.3": "ro-a"},
	}
	var out syncBuffer
	a := &app{stdout: &out}
	if err := a.printNode(resp, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Labels:       dc=east\n",
		"State:        healthy: heartbeat 2s old; gossip alive\n",
		"Stream:       connected from 10.0.0.5:40000, last heartbeat 2s ago\n",
		"Gossip:       alive\n",
		"Agent:        0.4.0, up 1h, load 0.25\n",
		"Facts:        linux/amd64, host web1, 2 CPUs\n",
		"  PACKAGE  VERSION  INSTALLED",
		"  go       1.20.3   ",
		"  ro-a     1.19.0\n",
		"  ro-b     go@1.21.0  install  failed     1m ago    step check: go version printed go1.20.3\n",
		"  ro-a     go@1.20.3  install  succeeded  1h ago    -\n",
		"\nDrift:\n  checked 2026-12-02 07:59:00Z (sizes, modes and times; packages checked: 1):\n    go 1.20.3: 1 changed since Ferry installed it\n      /usr/local/go/bin/go: modified since install\n",
		"Last error:   rollout ro-b (go@1.21.0) at ",
		": step check: go version printed go1.20.3\n              logs: ferryctl logs ro-b n1\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// A failed step is named once, and a long reason keeps its end in a table.
func TestJobDetailAndOneLine(t *testing.T) {
	j := &ferryv1.NodeJob{FailedStep: "archive -> /usr/local/go", Message: "archive -> /usr/local/go: extract go1.20.3.linux-amd64.tar.gz: entry ../etc/passwd escapes the destination"}
	if got, want := jobDetail(j), "step archive -> /usr/local/go: extract go1.20.3.linux-amd64.tar.gz: entry ../etc/passwd escapes the destination"; got != want {
		t.Errorf("jobDetail = %q, want %q", got, want)
	}
	long := "step archive -> /usr/local/go: extract go1.20.3.linux-amd64.tar.gz: " + strings.Repeat("nested cause: ", 20) + "entry ../etc/passwd escapes the destination"
	got := oneLine(long)
	if !strings.HasPrefix(got, "step archive -> /usr/local/go") || !strings.HasSuffix(got, "entry ../etc/passwd escapes the destination") || len([]rune(got)) != 160 {
		t.Errorf("oneLine = %q (%d runes): want the start and the reason, 160 runes", got, len([]rune(got)))
	}
}

// Shell completion asks the controller: node IDs, groups, labels and
// packages; --state and -o offer their words.
func TestCompletionFromController(t *testing.T) {
	cfg := startController(t)
	tok := createToken(t, cfg, "--group", "staging", "--label", "dc=east")
	if _, err := newEnroller(t, dialAdmin(t, cfg)).enroll(tok, "n1", nil); err != nil {
		t.Fatal(err)
	}
	applyGoPackage(t, cfg)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "show", ""}, "n1\n"},
		{[]string{"logs", "x", ""}, "n1\n"},
		{[]string{"nodes", "--group", ""}, "staging\n"},
		{[]string{"nodes", "--selector", ""}, "dc=east\n"},
		{[]string{"rollout", "--package", ""}, "go@1.20.3\n"},
		{[]string{"rollout", "history", "--package", ""}, "go\n"},
		{[]string{"rollout", "--on-failure", ""}, "pause\nabort\nrollback\n"},
	} {
		out := mustRun(t, cfg, append([]string{"__complete"}, tc.args...))
		if !strings.HasPrefix(out, tc.want) {
			t.Errorf("completion of %q: got %q, want it to start with %q", tc.args, out, tc.want)
		}
	}
}
