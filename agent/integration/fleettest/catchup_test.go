package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// waitCaughtUp waits until the group reports no node behind and the
// agent's /etc/motd has the version.
func (f *fleet) waitCaughtUp(group string, a *testAgent, version string) *ferryv1.Group {
	f.t.Helper()
	motd := filepath.Join(f.dir, "roots", a.id, "etc/motd")
	deadline := time.Now().Add(30 * time.Second)
	for {
		g, err := ferryv1.NewGroupServiceClient(f.admin).GetGroup(context.Background(), &ferryv1.GetGroupRequest{Name: group})
		if err != nil {
			f.t.Fatalf("get group %s: %v", group, err)
		}
		b, _ := os.ReadFile(motd)
		if len(g.Group.Behind) == 0 && string(b) == "welcome to "+version+"\n" {
			return g.Group
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s not caught up to %s: /etc/motd %q, behind %v", a.id, version, b, g.Group.Behind)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLateNodesCatchUp(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 3)
	var agents []*testAgent
	for _, id := range []string{"c1", "c2"} {
		a := f.enroll(id, tok)
		f.start(a)
		agents = append(agents, a)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 5*time.Second)
	}
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s", r.State, r.Message)
	}

	// Enrolled after the rollout: it gets the group's version by itself.
	late := f.enroll("c3", tok)
	f.start(late)
	g := f.waitCaughtUp("staging", late, "1.0")
	if len(g.Desired) != 1 || g.Desired[0].Version != "1.0" || g.Desired[0].RolloutId != r.Id {
		t.Errorf("desired %v", g.Desired)
	}

	// Moved in from another group: caught up too.
	lab := f.enroll("c4", f.token("lab", 1))
	f.start(lab)
	f.waitState(lab.id, healthy, 5*time.Second)
	if _, err := ferryv1.NewNodeServiceClient(f.admin).MoveNode(context.Background(), &ferryv1.MoveNodeRequest{Id: "c4", Group: "staging"}); err != nil {
		t.Fatal(err)
	}
	f.waitCaughtUp("staging", lab, "1.0")

	list, err := ferryv1.NewRolloutServiceClient(f.admin).ListRollouts(context.Background(), &ferryv1.ListRolloutsRequest{PackageName: "motd"})
	if err != nil {
		t.Fatal(err)
	}
	var catchUps []string
	for _, x := range list.Rollouts {
		if x.Kind == ferryv1.RolloutKind_ROLLOUT_KIND_CATCH_UP {
			if x.CatchUpOf != r.Id || x.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED || x.CreatedBy != "controller" {
				t.Errorf("catch-up %s: of %s, %s, by %s", x.Id, x.CatchUpOf, x.State, x.CreatedBy)
			}
			catchUps = append(catchUps, x.Id)
		}
	}
	if len(catchUps) != 2 {
		t.Errorf("catch-ups %v, want one for c3 and one for c4", catchUps)
	}
	evs, err := ferryv1.NewAuditServiceClient(f.admin).ListAuditEvents(context.Background(), &ferryv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	audited := map[string]bool{}
	for _, e := range evs.Events {
		if e.Actor == "controller" && e.Outcome == "ok" {
			audited[e.Action+" "+e.Target] = true
		}
	}
	for _, want := range []string{"group.desired staging", "rollout.catch-up " + catchUps[0], "rollout.catch-up " + catchUps[1]} {
		if !audited[want] {
			t.Errorf("audit log lacks %q by controller: %v", want, evs.Events)
		}
	}

	// Turning catch-up off is an audited admin action.
	if _, err := ferryv1.NewGroupServiceClient(f.admin).UpdateGroup(context.Background(), &ferryv1.UpdateGroupRequest{Name: "staging", CatchUp: proto.Bool(false)}); err != nil {
		t.Fatal(err)
	}
	f.wantAudit("group.update", "staging", "catch-up=false")
}
