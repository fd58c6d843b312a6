package controller

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// connectWith opens a node's agent stream whose hello reports installed
// packages, and reads the welcome.
func connectWith(t *testing.T, ctx context.Context, c *Controller, agentTLS *tls.Config, installed ...*ferryv1.InstalledPackage) grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse] {
	t.Helper()
	s, err := ferryv1.NewAgentServiceClient(dial(t, c, agentTLS)).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "test", Installed: installed}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("connect: %v, %v; want the welcome", m, err)
	}
	return s
}

// Over the real API: an undo plan says per node from what to what, from
// what the agents report; a plan that would be refused is an error; a
// package version a node has installed, or an active rollout uses, cannot
// be removed, and the refusal names them.
func TestUndoPlanAndPackageRmOverTheAPI(t *testing.T) {
	c, conn := startForRawAgents(t)
	ctx := t.Context()
	tok, err := ferryv1.NewTokenServiceClient(conn).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "production"})
	if err != nil {
		t.Fatal(err)
	}
	reports := map[string][]*ferryv1.InstalledPackage{
		"web-01": {{Name: "go", Version: "1.26.8", PreviousVersion: "1.20.3"}},
		"web-02": {{Name: "go", Version: "1.26.8"}},
		"web-03": nil,
	}
	for _, id := range []string{"web-01", "web-02", "web-03"} {
		agentTLS, err := enroll(c, tok.Secret, id)
		if err != nil {
			t.Fatal(err)
		}
		connectWith(t, ctx, c, agentTLS, reports[id]...)
	}
	rollouts := ferryv1.NewRolloutServiceClient(conn)
	var plan *ferryv1.UndoRolloutResponse
	deadline := time.Now().Add(10 * time.Second)
	for {
		plan, err = rollouts.UndoRollout(ctx, &ferryv1.UndoRolloutRequest{Group: "production", PackageName: "go", Plan: true})
		if err == nil && len(plan.Plan) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the hellos are handled asynchronously
	}
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range plan.Plan {
		got[p.NodeId] = p.FromVersion + ">" + p.ToVersion + " removed=" + map[bool]string{true: "yes", false: "no"}[p.Removed] + " " + p.Note
	}
	for id, want := range map[string]string{
		"web-01": "1.26.8>1.20.3 removed=no rollback",
		"web-02": "1.26.8> removed=yes rollback",
		"web-03": "> removed=no left alone: it does not have go",
	} {
		if !strings.HasPrefix(got[id], want) {
			t.Errorf("%s: plan %q, want %q...", id, got[id], want)
		}
	}
	if plan.Rollout != nil || len(c.engine.List("", 0)) != 0 {
		t.Error("the plan started a rollout")
	}
	_, err = rollouts.UndoRollout(ctx, &ferryv1.UndoRolloutRequest{Group: "production", PackageName: "tool", Plan: true})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "nothing to undo") {
		t.Errorf("plan of an undo with nothing to do: %v, want FailedPrecondition, nothing to undo", err)
	}

	pkgs := ferryv1.NewPackageServiceClient(conn)
	for _, v := range []string{"1.26.8", "1.27.0"} {
		if _, err := pkgs.ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{Filename: "go.yaml", Yaml: "name: go\nversion: \"" + v + "\"\nsteps:\n  - check: {run: \"true\"}\n"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = pkgs.DeletePackage(ctx, &ferryv1.DeletePackageRequest{Name: "go", Version: "1.26.8"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "installed on node web-01, web-02") || !strings.Contains(err.Error(), "ferryctl rollout --remove go") {
		t.Errorf("rm of an installed version: %v", err)
	}
	r, err := rollouts.CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "go", PackageVersion: "1.27.0", Target: &ferryv1.Target{Group: "production"}})
	if err != nil {
		t.Fatal(err)
	}
	id := r.Rollout.Id
	_, err = pkgs.DeletePackage(ctx, &ferryv1.DeletePackageRequest{Name: "go", Version: "1.27.0"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "used by rollout "+id) || !strings.Contains(err.Error(), "ferryctl rollout abort "+id) {
		t.Errorf("rm of a version an active rollout uses: %v", err)
	}
	if _, err := pkgs.GetPackage(ctx, &ferryv1.GetPackageRequest{Name: "go", Version: "1.27.0"}); err != nil {
		t.Errorf("the refused rm removed the package: %v", err)
	}
	if _, err := pkgs.DeletePackage(ctx, &ferryv1.DeletePackageRequest{Name: "go", Version: "9"}); status.Code(err) != codes.NotFound {
		t.Errorf("rm of an unknown version: %v, want NotFound", err)
	}
	evs := auditEvents(t, c)
	if ev := evs[0]; ev.Action != "package.rm" || ev.Target != "go@9" || ev.Outcome == "ok" {
		t.Errorf("last audit entry %v, want the refused package.rm", ev)
	}
}
