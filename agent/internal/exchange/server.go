package exchange

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/fetch"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Bounds of the piece server.
const (
	// MaxWait bounds how long a request waits for a piece this agent is
	// still fetching.
	MaxWait = 10 * time.Second
	// DefaultMaxServing is how many pieces are streamed at once; more
	// requests queue for up to slotWait, then are told to go elsewhere.
	DefaultMaxServing = 16
	slotWait          = 3 * time.Second
	// messageSize is the most bytes a FetchPiece message carries.
	messageSize = 1 << 20
	// The controller's answer to AuthorizePeer is kept this long per
	// (caller, digest): a yes for a minute, a no briefly (the caller may
	// be given the job a moment later).
	allowedFor = time.Minute
	deniedFor  = 5 * time.Second
	// maxAnswers bounds the kept answers.
	maxAnswers = 4096
	// authorizeTimeout bounds one AuthorizePeer call.
	authorizeTimeout = 10 * time.Second
)

// Source opens the verified pieces this agent holds (fetch.Fetcher).
type Source interface {
	OpenPiece(ctx context.Context, digest string, index uint32, wait time.Duration) (io.ReadCloser, error)
}

// Authorizer asks the controller whether a node may have a download's
// pieces (the agent's AgentService client).
type Authorizer interface {
	AuthorizePeer(ctx context.Context, in *ferryv1.AuthorizePeerRequest, opts ...grpc.CallOption) (*ferryv1.AuthorizePeerResponse, error)
}

// ServerConfig configures a piece server.
type ServerConfig struct {
	// Addr is the address to listen on ("host:port").
	Addr string
	// Certificate returns the agent's current certificate (renewals
	// included); Pool is the installation's CA.
	Certificate func() *tls.Certificate
	Pool        *x509.CertPool
	Controller  Authorizer
	Source      Source
	// MaxServing bounds the pieces streamed at once (default
	// DefaultMaxServing).
	MaxServing int
	// Served, if set, counts the piece bytes sent to peers.
	Served func(bytes int)
	Logger *slog.Logger
	// Now is the clock of the answers kept and of certificates (the
	// agent's: the controller's time, the node's clock plus its skew).
	Now func() time.Time
}

// Server is a running piece server.
type Server struct {
	ferryv1.UnimplementedPieceServiceServer
	cfg   ServerConfig
	log   *slog.Logger
	lis   net.Listener
	grpc  *grpc.Server
	slots chan struct{}

	mu      sync.Mutex
	answers map[answerKey]answer
}

type answerKey struct{ node, digest string }

type answer struct {
	allowed bool
	reason  string
	until   time.Time
}

// piecePolicy lets agent certificates call the piece service and nothing
// else (no other service is registered on this server).
func piecePolicy(string) rpc.Access { return rpc.Access{Roles: []pki.Role{pki.RoleAgent}} }

// Listen binds the piece server's address; Serve serves it.
func Listen(cfg ServerConfig) (*Server, error) {
	if cfg.Certificate == nil || cfg.Pool == nil || cfg.Controller == nil || cfg.Source == nil {
		return nil, errors.New("exchange: Certificate, Pool, Controller and Source are required")
	}
	if cfg.MaxServing <= 0 {
		cfg.MaxServing = DefaultMaxServing
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("--peer-listen %s: %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, lis: lis, slots: make(chan struct{}, cfg.MaxServing), answers: map[answerKey]answer{}}
	s.grpc = rpc.NewServer(rpc.ServerOptions{TLS: serverTLS(cfg.Certificate, cfg.Pool, cfg.Now), Logger: cfg.Logger, Policy: piecePolicy})
	ferryv1.RegisterPieceServiceServer(s.grpc, s)
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until ctx ends, then stops (pieces being streamed are
// cut: their fetchers go elsewhere).
func (s *Server) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, s.grpc.Stop)
	defer stop()
	if err := s.grpc.Serve(s.lis); err != nil && ctx.Err() == nil {
		s.log.Error("piece server stopped", "addr", s.Addr(), "err", err)
	}
}

// FetchPiece streams one verified piece to an agent the controller
// allows.
func (s *Server) FetchPiece(req *ferryv1.FetchPieceRequest, stream grpc.ServerStreamingServer[ferryv1.FetchPieceResponse]) error {
	ctx := stream.Context()
	caller, ok := rpc.CallerFrom(ctx)
	if !ok || caller.Identity.Role != pki.RoleAgent {
		return status.Error(codes.PermissionDenied, "only agents of this installation may fetch pieces")
	}
	if _, err := sha256digest.Parse(req.GetDigest()); err != nil {
		return status.Errorf(codes.InvalidArgument, "digest: %v", err)
	}
	node := caller.Identity.Name
	if err := s.authorize(ctx, node, req.GetDigest()); err != nil {
		return err
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-time.After(slotWait):
		return status.Errorf(codes.ResourceExhausted, "this agent is serving %d pieces already; fetch the piece elsewhere", cap(s.slots))
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	wait := min(max(req.GetWait().AsDuration(), 0), MaxWait)
	r, err := s.cfg.Source.OpenPiece(ctx, req.GetDigest(), req.GetIndex(), wait)
	if errors.Is(err, fetch.ErrNoPiece) {
		return status.Errorf(codes.NotFound, "this agent holds no verified piece %d of %s", req.GetIndex(), req.GetDigest())
	}
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		s.log.Warn("cannot read a piece to serve", "artifact", req.GetDigest(), "piece", req.GetIndex(), "err", err)
		return status.Errorf(codes.Unavailable, "this agent cannot read piece %d of %s now; fetch it elsewhere", req.GetIndex(), req.GetDigest())
	}
	defer func() { _ = r.Close() }() // read-only
	buf := make([]byte, messageSize)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&ferryv1.FetchPieceResponse{Data: buf[:n]}); err != nil {
				return err
			}
			if s.cfg.Served != nil {
				s.cfg.Served(n)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			s.log.Warn("cannot read a piece to serve", "artifact", req.GetDigest(), "piece", req.GetIndex(), "err", rerr)
			return status.Errorf(codes.Unavailable, "this agent cannot read piece %d of %s now; fetch it elsewhere", req.GetIndex(), req.GetDigest())
		}
	}
}

// authorize asks the controller (or its recent answer) whether node may
// have digest's pieces.
func (s *Server) authorize(ctx context.Context, node, digest string) error {
	key := answerKey{node, digest}
	now := s.cfg.Now()
	s.mu.Lock()
	a, ok := s.answers[key]
	s.mu.Unlock()
	if !ok || !now.Before(a.until) {
		actx, cancel := context.WithTimeout(ctx, authorizeTimeout)
		resp, err := s.cfg.Controller.AuthorizePeer(actx, &ferryv1.AuthorizePeerRequest{NodeId: node, Digest: digest})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			s.log.Warn("cannot ask the controller whether a peer may have an artifact", "peer", node, "artifact", digest, "err", err)
			return status.Errorf(codes.Unavailable, "this agent cannot ask the controller whether %s may have %s now (%s); fetch the piece elsewhere", node, digest, message(err))
		}
		a = answer{allowed: resp.GetAllowed(), reason: resp.GetReason(), until: now.Add(deniedFor)}
		if a.allowed {
			a.until = now.Add(allowedFor)
		}
		s.keep(key, a, now)
	}
	if !a.allowed {
		s.log.Info("refused a peer a piece: the controller does not allow it", "peer", node, "artifact", digest, "reason", a.reason)
		return status.Errorf(codes.PermissionDenied, "the controller does not allow %s to have %s: %s", node, digest, a.reason)
	}
	return nil
}

// keep stores an answer, dropping expired ones (and, when all are
// current, every one) once maxAnswers are kept.
func (s *Server) keep(key answerKey, a answer, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.answers) >= maxAnswers {
		for k, v := range s.answers {
			if !now.Before(v.until) {
				delete(s.answers, k)
			}
		}
		if len(s.answers) >= maxAnswers {
			clear(s.answers)
		}
	}
	s.answers[key] = a
}

// message is a status error's message, without gRPC's wrapper.
func message(err error) string {
	if st, ok := status.FromError(err); ok && st.Message() != "" {
		return strings.TrimSpace(st.Message())
	}
	return err.Error()
}
