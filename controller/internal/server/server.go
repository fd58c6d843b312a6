// Package server implements the controller's gRPC services on top of the
// fleet registry, the store and the CA. Handlers convert to status errors
// at this boundary only.
package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// JobSink receives what agents report about jobs (the rollout engine).
type JobSink interface {
	// AgentHello is called when a node connects, with the jobs it
	// re-reports, so a restarted controller learns outcomes it missed.
	AgentHello(nodeID string, recent []*ferryv1.JobUpdate)
	HandleJobUpdate(nodeID string, u *ferryv1.JobUpdate)
	HandleJobLog(nodeID string, l *ferryv1.JobLog)
}

// Observer receives per-heartbeat measurements (metrics).
type Observer interface {
	HeartbeatReceived(age time.Duration)
}

// Deps are what the services need.
type Deps struct {
	Store            *store.Store
	Fleet            *fleet.Registry
	CA               *pki.CA
	Logger           *slog.Logger
	Now              func() time.Time
	GossipKey        []byte
	GossipLabel      string
	GossipSeeds      func() []string
	AgentCertTTL     time.Duration
	AdminCertTTL     time.Duration
	AdvertiseAddress string // what `token create` prints for agents to dial
	Jobs             JobSink
	Observer         Observer
	TokenDefaultTTL  time.Duration
	// Admins tracks revoked admin credentials.
	Admins *Admins
	// OnHello is told each connecting node's gossip address.
	OnHello func(nodeID, gossipAddr string)
}

// Register adds the services this package implements to a gRPC server.
func Register(s *grpc.Server, d *Deps) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	ferryv1.RegisterEnrollmentServiceServer(s, &enrollmentServer{d: d})
	ferryv1.RegisterNodeServiceServer(s, &nodeServer{d: d})
	ferryv1.RegisterTokenServiceServer(s, &tokenServer{d: d})
	ferryv1.RegisterCertificateServiceServer(s, &certificateServer{d: d})
	ferryv1.RegisterAuditServiceServer(s, &auditServer{d: d})
}

// NewAgentService returns the agent service; the artifact download is
// delegated to dl.
func NewAgentService(d *Deps, dl Downloader) ferryv1.AgentServiceServer {
	return &agentServer{d: d, dl: dl}
}

// Downloader serves artifact bytes to agents.
type Downloader interface {
	DownloadArtifact(*ferryv1.DownloadArtifactRequest, grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error
}

// caller returns the authenticated caller; handlers behind the auth
// interceptor always have one.
func caller(ctx context.Context) (rpc.Caller, error) {
	c, ok := rpc.CallerFrom(ctx)
	if !ok {
		return rpc.Caller{}, status.Error(codes.Unauthenticated, "client certificate required")
	}
	return c, nil
}

// Audit writes an admin action to the audit log.
func (d *Deps) Audit(ctx context.Context, action, target string, err error, detail string) {
	outcome := "ok"
	if err != nil {
		outcome = err.Error()
	}
	ev := &ferryv1.AuditEvent{At: timestamppb.New(d.Now()), Actor: rpc.CallerName(ctx), Action: action, Target: target, Outcome: outcome, Detail: detail}
	if aerr := d.Store.AppendAudit(ev); aerr != nil {
		d.Logger.Error("write audit event", "action", action, "err", aerr)
	}
}

func storeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	default:
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Internal, err.Error())
	}
}

type auditServer struct {
	ferryv1.UnimplementedAuditServiceServer
	d *Deps
}

func (s *auditServer) ListAuditEvents(ctx context.Context, req *ferryv1.ListAuditEventsRequest) (*ferryv1.ListAuditEventsResponse, error) {
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	evs, err := s.d.Store.AuditEvents(limit)
	if err != nil {
		return nil, storeErr(err)
	}
	return &ferryv1.ListAuditEventsResponse{Events: evs}, nil
}
