// Package server is the controller's one gRPC layer: every service's
// handlers live here, on top of the domain packages (fleet, store,
// artifact, packages, rollout) and the CA, which speak plain Go and return
// sentinel or typed errors. Handlers turn those into status errors here
// only, through the one table in errors.go; a test keeps the status and
// codes packages out of the rest of the module.
package server

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
	"github.com/ferrydeploy/ferry/controller/internal/packages"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/controller/internal/tracker"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// JobSink receives what agents report about jobs (the rollout engine).
type JobSink interface {
	// AgentHello is called when a node connects, with the jobs it
	// re-reports, so a restarted controller learns outcomes it missed.
	AgentHello(nodeID string, recent []*ferryv1.JobUpdate)
	// AgentHeartbeat is called after each heartbeat is recorded, so a
	// node waiting out its healthy period is done on the heartbeat that
	// ends it.
	AgentHeartbeat(nodeID string)
	HandleJobUpdate(nodeID string, u *ferryv1.JobUpdate)
	// HandleJobLog stores a job's output and returns the acknowledgement
	// to send back (nil for none: the agent sends the lines again later).
	HandleJobLog(nodeID string, l *ferryv1.JobLog) *ferryv1.JobLogAck
}

// JobArtifacts says which artifacts a node may download (the rollout
// engine): only those of the jobs sent to it.
type JobArtifacts interface {
	// NodeMayFetch reports whether a job sent to the node uses the
	// artifact with this digest and is running or ended only recently.
	NodeMayFetch(nodeID, digest string) bool
}

// AgentEvents hears of agent streams: opened (after the welcome), each
// heartbeat, closed (left: the agent shut down).
type AgentEvents interface {
	Attached(nodeID, addr string, hello *ferryv1.AgentHello)
	Heartbeat(nodeID string, hb *ferryv1.Heartbeat)
	Detached(nodeID string, left bool)
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
	Gossip           GossipKeys // nil: no gossip key to hand out or rotate
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
	// OnHello is told each connecting node's gossip address, as its stream
	// vouches for it (fleet.GossipAddr): never a host the hello names.
	OnHello func(nodeID, gossipAddr string)
	// Events, when set, hears of each agent stream's life (with several
	// controllers, to relay it to the leader: package cluster).
	Events AgentEvents

	Artifacts *artifact.Store
	Downloads *artifact.Downloader // nil: agents are told there is no artifact store
	Importer  *importer.Importer   // nil: imports are refused
	// Replicas copies pushed and imported artifacts to the other
	// controllers; nil: one controller, no copies.
	Replicas Replicas
	Packages *packages.Store
	Rollouts Rollouts
	// Groups serves GroupService; nil: not registered.
	Groups Groups

	// JobArtifacts scopes downloads to the nodes' jobs; nil: every
	// download is refused.
	JobArtifacts JobArtifacts

	// Leader, with several controllers on etcd, says where the calls
	// only the leader serves (the rollout engine's) go: ok is false to
	// serve them here (this controller leads or is taking over, is cut
	// off from etcd, or no leader is elected). Nil: always here.
	Leader func(ctx context.Context) (Leader, bool)
	// ControllerID names this controller in errors of forwarded calls.
	ControllerID string

	// Tracker answers GetPieces (peer exchange, pieces.go); nil: peer
	// exchange is off (--peer-exchange=false) and agents download from
	// the controller.
	Tracker *tracker.Tracker
	// BadPieces counts the reports of peers that served bad bytes; may be
	// nil.
	BadPieces Counter

	streams    *streams    // set by Register
	fwd        *forwarding // set by Register
	badReports reportLimit
}

// Register adds every Ferry service to a gRPC server.
func Register(s *grpc.Server, d *Deps) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	d.streams = newStreams(d.recheck)
	d.fwd = newForwarding(d)
	reg := streamRegistrar{s: s, streams: d.streams, fwd: d.fwd}
	ferryv1.RegisterEnrollmentServiceServer(reg, &enrollmentServer{d: d})
	ferryv1.RegisterAgentServiceServer(reg, &agentServer{d: d})
	ferryv1.RegisterNodeServiceServer(reg, &nodeServer{d: d, watches: newWatchLimit(maxWatchesPerAdmin)})
	ferryv1.RegisterTokenServiceServer(reg, &tokenServer{d: d})
	ferryv1.RegisterCertificateServiceServer(reg, &certificateServer{d: d})
	ferryv1.RegisterAuditServiceServer(reg, &auditServer{d: d})
	ferryv1.RegisterArtifactServiceServer(reg, &artifactServer{d: d, log: d.Logger.With("component", "artifact")})
	ferryv1.RegisterPackageServiceServer(reg, &packageServer{d: d})
	ferryv1.RegisterRolloutServiceServer(reg, &rolloutServer{d: d, r: d.Rollouts})
	ferryv1.RegisterLogServiceServer(reg, &logServer{d: d, r: d.Rollouts})
	ferryv1.RegisterGossipServiceServer(reg, &gossipServer{d: d})
	if d.Artifacts != nil {
		ferryv1.RegisterReplicaServiceServer(reg, newReplicaServer(d))
	}
	if d.Groups != nil {
		ferryv1.RegisterGroupServiceServer(reg, &groupServer{g: d.Groups})
	}
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

// Every admin action is audited with its actor and outcome, in the
// transaction that makes its change: a handler builds the entry with
// auditEvent and hands it to the store method that makes the change (each
// takes one; see store/audit.go), so an action whose entry cannot be
// written fails ("could not record the audit entry: …; nothing was
// changed") and changes nothing. A refused action records its entry with
// refused; one that succeeds without changing anything (an identical
// re-apply) with unchanged, and fails when that cannot be written.

// auditEvent is the audit entry of an action by the caller of ctx, with
// outcome "ok".
func (d *Deps) auditEvent(ctx context.Context, action, target, detail string) *ferryv1.AuditEvent {
	return d.auditEventBy(rpc.CallerName(ctx), action, target, detail)
}

// auditEventBy is auditEvent for an actor without a certificate (a join
// token's holder).
func (d *Deps) auditEventBy(actor, action, target, detail string) *ferryv1.AuditEvent {
	return &ferryv1.AuditEvent{At: timestamppb.New(d.Now()), Actor: actor, Action: action, Target: target, Outcome: "ok", Detail: detail}
}

// refused records that the action of ev failed with err. The action
// changed nothing either way, so an entry that cannot be written is only
// logged.
func (d *Deps) refused(ev *ferryv1.AuditEvent, err error) {
	ev.Outcome = err.Error()
	if aerr := d.Store.AppendAudit(ev); aerr != nil {
		d.Logger.Error("write audit entry", "action", ev.GetAction(), "target", ev.GetTarget(), "err", aerr)
	}
}

// unchanged records an action that succeeded without changing anything;
// its error fails the action.
func (d *Deps) unchanged(ev *ferryv1.AuditEvent) error {
	return d.Store.AppendAudit(ev)
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
		return nil, toStatus(err)
	}
	return &ferryv1.ListAuditEventsResponse{Events: evs}, nil
}
