package fleettest

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// motdPackage writes a file and an env file and checks them; no artifact.
func motdPackage(version, check string) string {
	return `name: motd
version: ` + version + `
steps:
  - file: {path: /etc/motd, content: "welcome to ` + version + `\n", mode: "0644"}
  - env: {name: motd, vars: {MOTD_VERSION: "` + version + `"}}
  - check: {run: '` + check + `', expect: "` + version + `"}
`
}

func (f *fleet) apply(yaml string) {
	f.t.Helper()
	if _, err := ferryv1.NewPackageServiceClient(f.admin).ApplyPackage(context.Background(), &ferryv1.ApplyPackageRequest{Yaml: yaml, Filename: "motd.yaml"}); err != nil {
		f.t.Fatalf("apply package: %v", err)
	}
}

// rollout creates a rollout and waits for it to end.
func (f *fleet) rollout(req *ferryv1.CreateRolloutRequest) *ferryv1.Rollout {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := ferryv1.NewRolloutServiceClient(f.admin)
	resp, err := c.CreateRollout(ctx, req)
	if err != nil {
		f.t.Fatalf("create rollout: %v", err)
	}
	return f.wait(ctx, resp.Rollout.Id)
}

func (f *fleet) wait(ctx context.Context, id string) *ferryv1.Rollout {
	f.t.Helper()
	stream, err := ferryv1.NewRolloutServiceClient(f.admin).WatchRollout(ctx, &ferryv1.WatchRolloutRequest{Id: id})
	if err != nil {
		f.t.Fatal(err)
	}
	var last *ferryv1.Rollout
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last
		}
		if err != nil {
			f.t.Fatalf("watch rollout %s: %v (last: %s: %s; nodes %v)", id, err, last.GetState(), last.GetMessage(), last.GetNodes())
		}
		last = ev.Rollout
	}
}

func fast() *ferryv1.Strategy {
	return &ferryv1.Strategy{Canary: proto.Uint32(1), AutoPromote: true, MaxParallel: "2", HealthyFor: durationpb.New(300 * time.Millisecond), ProgressDeadline: durationpb.New(30 * time.Second)}
}

func TestRolloutInstallsAndUndoes(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 3)
	var agents []*testAgent
	for _, id := range []string{"r1", "r2", "r3"} {
		a := f.enroll(id, tok)
		f.start(a)
		agents = append(agents, a)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 5*time.Second)
	}
	check := `echo "$MOTD_VERSION"`
	f.apply(motdPackage("1.0", check))
	f.apply(motdPackage("2.0", check))

	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout 1.0 ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	for _, a := range agents {
		motd := filepath.Join(f.dir, "roots", a.id, "etc/motd")
		if b, err := os.ReadFile(motd); err != nil || string(b) != "welcome to 1.0\n" {
			t.Errorf("%s: /etc/motd = %q, %v", a.id, b, err)
		}
	}
	// Rolling out the same version again changes nothing.
	r = f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	for _, n := range r.Nodes {
		if n.Outcome != ferryv1.NodeOutcome_NODE_OUTCOME_UNCHANGED {
			t.Errorf("re-rollout: %s is %s, want unchanged", n.NodeId, n.Outcome)
		}
	}
	r = f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "2.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout 2.0 ended %s: %s", r.State, r.Message)
	}
	// The job log reached the controller.
	f.waitLine(r.Id, "r1", "2.0")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	undo, err := ferryv1.NewRolloutServiceClient(f.admin).UndoRollout(ctx, &ferryv1.UndoRolloutRequest{Group: "staging", PackageName: "motd", Strategy: fast()})
	if err != nil {
		t.Fatalf("undo: %v", err)
	}
	if r := f.wait(ctx, undo.Rollout.Id); r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("undo ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	for _, a := range agents {
		motd := filepath.Join(f.dir, "roots", a.id, "etc/motd")
		if b, err := os.ReadFile(motd); err != nil || string(b) != "welcome to 1.0\n" {
			t.Errorf("%s after undo: /etc/motd = %q, %v; want 1.0 back", a.id, b, err)
		}
	}
	// A removal rollout deletes the package's files on every node.
	rm, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "motd", Remove: true, Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if err != nil {
		t.Fatalf("remove: %v", err)
	}
	if r := f.wait(ctx, rm.Rollout.Id); r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.JobKind != ferryv1.JobKind_JOB_KIND_REMOVE {
		t.Fatalf("removal ended %s (%s): %s %v", r.State, r.JobKind, r.Message, r.Nodes)
	}
	for _, a := range agents {
		if _, err := os.Lstat(filepath.Join(f.dir, "roots", a.id, "etc/motd")); !os.IsNotExist(err) {
			t.Errorf("%s after the removal: /etc/motd is still there (%v)", a.id, err)
		}
	}
}

func TestRolloutFailingCheckPausesAndKeepsPreviousVersion(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 2)
	a1, a2 := f.enroll("c1", tok), f.enroll("c2", tok)
	f.start(a1)
	f.start(a2)
	f.waitState("c1", healthy, 5*time.Second)
	f.waitState("c2", healthy, 5*time.Second)
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))
	f.apply(motdPackage("2.0", `echo broken; exit 3`))
	if r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()}); r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("1.0: %s %s", r.State, r.Message)
	}
	st := fast()
	st.OnFailure = ferryv1.FailureAction_FAILURE_ACTION_ABORT
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "2.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: st})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_ABORTED {
		t.Fatalf("2.0 ended %s, want aborted after the canary failed: %s", r.State, r.Message)
	}
	canary := r.Nodes[0]
	if canary.Outcome != ferryv1.NodeOutcome_NODE_OUTCOME_FAILED || !strings.Contains(canary.FailedStep, "check") {
		t.Errorf("canary %s: %s step %q, want failed at the check", canary.NodeId, canary.Outcome, canary.FailedStep)
	}
	if r.Nodes[1].Outcome != ferryv1.NodeOutcome_NODE_OUTCOME_SKIPPED {
		t.Errorf("second node %s, want skipped", r.Nodes[1].Outcome)
	}
	for _, id := range []string{"c1", "c2"} {
		b, _ := os.ReadFile(filepath.Join(f.dir, "roots", id, "etc/motd"))
		if string(b) != "welcome to 1.0\n" {
			t.Errorf("%s: /etc/motd = %q, want the previous version intact", id, b)
		}
	}
}
