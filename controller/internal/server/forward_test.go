package server

import (
	"context"
	"log/slog"
	"net"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/cluster"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// pauseRecorder is a rollout engine that records who paused what.
type pauseRecorder struct {
	Rollouts
	actor, id string
}

func (p *pauseRecorder) Pause(actor, id string) (*ferryv1.Rollout, error) {
	p.actor, p.id = actor, id
	return &ferryv1.Rollout{Id: id, CreatedBy: "someone"}, nil
}

// forwardStream is the leader's end of a Forward stream, fed from msgs.
type forwardStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*ferryv1.ForwardRequest
	sent []*ferryv1.ForwardResponse
}

func (s *forwardStream) Context() context.Context     { return s.ctx }
func (s *forwardStream) SetTrailer(metadata.MD)       {}
func (s *forwardStream) SendHeader(metadata.MD) error { return nil }
func (s *forwardStream) Send(m *ferryv1.ForwardResponse) error {
	s.sent = append(s.sent, m)
	return nil
}

func (s *forwardStream) Recv() (*ferryv1.ForwardRequest, error) {
	if len(s.msgs) == 0 {
		return nil, status.Error(codes.Canceled, "no more")
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

// The leader runs a forwarded call as the admin who made it, and only
// when it would have accepted the admin's own call: only from a
// controller, only for the calls controllers forward, only with a
// certificate of its CA with a role the call allows.
func TestServeForwardAuthorizesTheAdmin(t *testing.T) {
	p := pkitest.New(t)
	other := pkitest.New(t) // another installation
	engine := &pauseRecorder{}
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	admins, err := NewAdmins(st)
	if err != nil {
		t.Fatal(err)
	}
	d := &Deps{CA: p.CA, Rollouts: engine, Store: st, Admins: admins, Logger: slog.New(slog.DiscardHandler)}
	Register(grpc.NewServer(), d)
	revoked := p.Issue(t, pki.Identity{Role: pki.RoleAdmin, Name: "bob"})
	if err := admins.revoke("bob", time.Now().Add(time.Minute), nil); err != nil {
		t.Fatal(err)
	}
	controller := rpc.Caller{Identity: pki.Identity{Role: pki.RoleController}, Cert: p.Server.Leaf}
	pause, err := proto.Marshal(&ferryv1.PauseRolloutRequest{Id: "ro-1"})
	if err != nil {
		t.Fatal(err)
	}
	call := func(via rpc.Caller, method string, cert []byte) (*forwardStream, error) {
		s := &forwardStream{ctx: rpc.WithCaller(context.Background(), via), msgs: []*ferryv1.ForwardRequest{
			{Msg: &ferryv1.ForwardRequest_Call{Call: &ferryv1.ForwardCall{Method: method, AdminCertificateDer: cert, AdminAddress: "192.0.2.1:5555"}}},
			{Msg: &ferryv1.ForwardRequest_Message{Message: pause}},
		}}
		return s, d.ServeForward(s)
	}

	s, err := call(controller, ferryv1.RolloutService_PauseRollout_FullMethodName, p.Admin.Leaf.Raw)
	if err != nil {
		t.Fatalf("forwarded pause: %v", err)
	}
	if engine.actor != "admin/"+pkitest.AdminName || engine.id != "ro-1" {
		t.Errorf("the engine paused %q as %q; want ro-1 as admin/%s", engine.id, engine.actor, pkitest.AdminName)
	}
	var resp ferryv1.PauseRolloutResponse
	if len(s.sent) != 1 || proto.Unmarshal(s.sent[0].GetMessage(), &resp) != nil || resp.GetRollout().GetId() != "ro-1" {
		t.Errorf("the leader answered %v; want the paused rollout", s.sent)
	}

	for _, tc := range []struct {
		name   string
		via    rpc.Caller
		method string
		cert   []byte
		code   codes.Code
		want   string
	}{
		{"an admin calls Forward", rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "mallory"}, Cert: p.Admin.Leaf},
			ferryv1.RolloutService_PauseRollout_FullMethodName, p.Admin.Leaf.Raw, codes.PermissionDenied, "only a controller may forward"},
		{"a call that is not forwarded", controller,
			ferryv1.TokenService_CreateToken_FullMethodName, p.Admin.Leaf.Raw, codes.PermissionDenied, "is not a call controllers forward"},
		{"an agent's certificate", controller,
			ferryv1.RolloutService_PauseRollout_FullMethodName, p.Agent.Leaf.Raw, codes.PermissionDenied, "is not allowed for agent/n1"},
		{"another CA's admin", controller,
			ferryv1.RolloutService_PauseRollout_FullMethodName, other.Admin.Leaf.Raw, codes.Unauthenticated, "does not verify against this installation's CA"},
		{"a revoked admin", controller,
			ferryv1.RolloutService_PauseRollout_FullMethodName, revoked.Leaf.Raw, codes.PermissionDenied, "the credential of admin bob was revoked"},
		{"no certificate", controller,
			ferryv1.RolloutService_PauseRollout_FullMethodName, nil, codes.InvalidArgument, "carries the admin's certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			*engine = pauseRecorder{}
			_, err := call(tc.via, tc.method, tc.cert)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want %s saying %q", err, tc.code, tc.want)
			}
			if engine.actor != "" {
				t.Errorf("the engine paused as %q", engine.actor)
			}
		})
	}
}

// A call forwarded to a leader that is gone fails with a message that
// says so, that nothing was changed, and to try again.
func TestForwardToALeaderThatIsGone(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := pkitest.New(t)
	d := &Deps{ControllerID: "c2"}
	f := newForwarding(d)
	ctx := rpc.WithCaller(context.Background(), rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "alice"}, Cert: p.Admin.Leaf})
	_, out := messageTypes("ferry.v1.RolloutService", "CreateRollout")
	err = f.forward(ctx, Leader{ID: "c1", Addr: addr, Conn: conn}, ferryv1.RolloutService_CreateRollout_FullMethodName, &ferryv1.CreateRolloutRequest{PackageName: "go"}, out,
		func(proto.Message) error { t.Error("a response from a leader that is gone"); return nil })
	want := "controller c2 could not forward CreateRollout to the leader, c1 at " + addr
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "nothing was changed: try again") {
		t.Errorf("got %v; want Unavailable saying %q, that nothing was changed and to try again", err, want)
	}
}

// leadingEngine is a rollout engine with nothing in use that leads or
// not.
type leadingEngine struct {
	Rollouts
	leading error
}

func (e *leadingEngine) Leading() error                      { return e.leading }
func (e *leadingEngine) ArtifactsInUse() map[string][]string { return nil }

// Artifact gc removes what nothing uses only where the rollouts run: a
// controller that does not lead (its leader unreachable, so the call was
// not forwarded) refuses and removes nothing, since a rollout in flight
// on the leader may need the artifact.
func TestArtifactGCOnlyWhereTheRolloutsRun(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	arts, err := artifact.Open(artifact.Config{Dir: filepath.Join(dir, "artifacts"), Records: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := arts.Put(context.Background(), artifact.PutRequest{Name: "tool", Version: "1"}, strings.NewReader("bytes")); err != nil {
		t.Fatal(err)
	}
	engine := &leadingEngine{leading: &cluster.NotLeaderError{ID: "c2", Leader: cluster.Member{ID: "c1", Addr: "10.0.0.1:7443"}}}
	d := &Deps{Store: st, Artifacts: arts, Rollouts: engine, Logger: slog.New(slog.DiscardHandler), Now: time.Now}
	srv := &artifactServer{d: d, log: d.Logger}
	ctx := rpc.WithCaller(context.Background(), rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "alice"}})
	_, err = srv.CollectArtifacts(ctx, &ferryv1.CollectArtifactsRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "artifact gc: ") || !strings.Contains(err.Error(), "c1 at 10.0.0.1:7443") {
		t.Errorf("gc on a controller that does not lead: %v; want Unavailable naming the leader", err)
	}
	if all, _ := arts.List(""); len(all) != 1 {
		t.Fatalf("the refused gc left %d artifacts, want the 1", len(all))
	}
	engine.leading = nil
	resp, err := srv.CollectArtifacts(ctx, &ferryv1.CollectArtifactsRequest{})
	if err != nil || len(resp.GetRemoved()) != 1 {
		t.Fatalf("gc on the leader: %v, %v; want tool@1 removed", resp, err)
	}
}

// hangingLeader accepts a forwarded call and then never answers.
type hangingLeader struct {
	ferryv1.UnimplementedClusterServiceServer
	accepted chan struct{}
}

func (h *hangingLeader) Forward(stream grpc.BidiStreamingServer[ferryv1.ForwardRequest, ferryv1.ForwardResponse]) error {
	if err := stream.SendHeader(metadata.Pairs(forwardAccepted, "1")); err != nil {
		return err
	}
	close(h.accepted)
	<-stream.Context().Done()
	return stream.Context().Err()
}

// A leader that stops while it serves a forwarded call: the caller hears
// that the call may have been applied and how to check before trying
// again; a watch is only told to try again.
func TestForwardToALeaderThatStopsMidCall(t *testing.T) {
	for _, tc := range []struct {
		method string
		req    proto.Message
		want   string
	}{
		{ferryv1.RolloutService_AbortRollout_FullMethodName, &ferryv1.AbortRolloutRequest{Id: "ro-1"}, "which stopped answering before it finished"},
		{ferryv1.RolloutService_WatchRollout_FullMethodName, &ferryv1.WatchRolloutRequest{Id: "ro-1"}, "which stopped answering ("},
	} {
		t.Run(tc.method, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			leader := &hangingLeader{accepted: make(chan struct{})}
			ferryv1.RegisterClusterServiceServer(srv, leader)
			go func() { _ = srv.Serve(lis) }()
			defer srv.Stop()
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			p := pkitest.New(t)
			f := newForwarding(&Deps{ControllerID: "c2"})
			f.onAccepted = srv.Stop // the leader goes once it has the call
			ctx := rpc.WithCaller(context.Background(), rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "alice"}, Cert: p.Admin.Leaf})
			_, out := messageTypes("ferry.v1.RolloutService", path.Base(tc.method))
			err = f.forward(ctx, Leader{ID: "c1", Addr: lis.Addr().String(), Conn: conn}, tc.method, tc.req, out, func(proto.Message) error { return nil })
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "controller c2 forwarded "+path.Base(tc.method)+" to the leader, c1 at ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want Unavailable saying %q", err, tc.want)
			}
			if applied := strings.Contains(err.Error(), "it may have been applied"); applied != (tc.method == ferryv1.RolloutService_AbortRollout_FullMethodName) {
				t.Errorf("%v: says it may have been applied: %v", err, applied)
			}
		})
	}
}
