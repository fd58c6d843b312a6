package server

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

type agentServer struct {
	ferryv1.UnimplementedAgentServiceServer
	d *Deps
}

// agentID returns the calling node's ID, from its certificate only.
func agentID(ctx context.Context) (rpc.Caller, error) {
	c, err := caller(ctx)
	if err != nil {
		return c, err
	}
	if c.Identity.Role != pki.RoleAgent {
		return c, status.Errorf(codes.PermissionDenied, "%s is not an agent", c.Identity)
	}
	return c, nil
}

func (s *agentServer) Connect(stream grpc.BidiStreamingServer[ferryv1.ConnectRequest, ferryv1.ConnectResponse]) error {
	ctx := stream.Context()
	c, err := agentID(ctx)
	if err != nil {
		return err
	}
	nodeID := c.Identity.Name
	log := s.d.Logger.With("node", nodeID)

	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first message on the stream must be a hello")
	}
	if err := fleet.CheckHello(hello); err != nil {
		log.Warn("hello refused", "err", err)
		return toStatus(err)
	}
	sess, err := s.d.Fleet.Attach(ctx, nodeID, c.Addr, hello)
	if err != nil {
		if st := sessionEnded(nodeID, err); st != nil {
			return st
		}
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	left := false
	writerDone := make(chan struct{})
	writerStarted := false
	defer func() {
		s.d.Fleet.Detach(sess, left) // ends the session: the writer stops
		_, still := s.d.Fleet.Via(nodeID)
		if s.d.Events != nil && !still {
			s.d.Events.Detached(nodeID, left) // not when a newer stream replaced this one
		}
		if s.d.Tracker != nil && !still {
			s.d.Tracker.Forget(nodeID) // its piece server is not named to peers any more
		}
		if writerStarted {
			<-writerDone // never Send after the handler returned
		}
	}()
	log.Info("agent connected", "addr", c.Addr, "version", hello.GetAgentVersion())

	var seeds []string
	if s.d.GossipSeeds != nil {
		seeds = s.d.GossipSeeds()
	}
	nodeGroup := ""
	if n, ok := s.d.Fleet.Node(nodeID); ok {
		nodeGroup = n.Group
	}
	if err := stream.Send(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Welcome{Welcome: &ferryv1.Welcome{
		HeartbeatInterval: durationpb.New(s.d.Fleet.HeartbeatInterval()),
		GossipSeeds:       seeds,
		Group:             nodeGroup,
		ServerTime:        timestamppb.New(s.d.Now()),
		// Read after Attach: a rotation from now on reaches this stream.
		GossipKey: s.d.gossipKey(),
	}}}); err != nil {
		return err
	}
	if s.d.OnHello != nil {
		s.d.OnHello(nodeID, sess.GossipAddr)
	}
	if s.d.Events != nil {
		s.d.Events.Attached(nodeID, c.Addr, hello)
	}
	if s.d.Jobs != nil {
		s.d.Jobs.AgentHello(nodeID, hello.GetRecentJobs())
	}

	// Writer: drains the session's outbox until the session ends.
	writeErr := make(chan error, 1)
	writerStarted = true
	go func() {
		defer close(writerDone)
		for {
			select {
			case <-sess.Done():
				writeErr <- nil
				return
			case msg := <-sess.Outbox():
				if err := stream.Send(msg); err != nil {
					writeErr <- err
					return
				}
			}
		}
	}()

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if err := checkReport(m); err != nil {
				recvErr <- toStatus(err)
				return
			}
			switch msg := m.Msg.(type) {
			case *ferryv1.ConnectRequest_Heartbeat:
				age := s.d.Fleet.Heartbeat(nodeID, msg.Heartbeat)
				if s.d.Events != nil {
					s.d.Events.Heartbeat(nodeID, msg.Heartbeat)
				}
				if s.d.Observer != nil {
					s.d.Observer.HeartbeatReceived(age)
				}
				if s.d.Jobs != nil {
					s.d.Jobs.AgentHeartbeat(nodeID)
				}
			case *ferryv1.ConnectRequest_JobUpdate:
				if s.d.Jobs != nil {
					s.d.Jobs.HandleJobUpdate(nodeID, msg.JobUpdate)
				}
			case *ferryv1.ConnectRequest_JobLog:
				if s.d.Jobs == nil {
					break
				}
				if ack := s.d.Jobs.HandleJobLog(nodeID, msg.JobLog); ack != nil {
					// A busy queue drops the ack: the agent sends the lines
					// again and the store drops them as duplicates.
					_ = s.d.Fleet.DispatchSpare(nodeID, &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_LogAck{LogAck: ack}})
				}
			case *ferryv1.ConnectRequest_Hello:
				recvErr <- status.Error(codes.InvalidArgument, "hello sent twice on one stream")
				return
			}
		}
	}()

	select {
	case err := <-recvErr:
		if errors.Is(err, io.EOF) {
			// The agent closed its side: a graceful shutdown.
			left = true
			log.Info("agent left")
			return nil
		}
		if status.Code(err) == codes.Canceled {
			log.Info("agent disconnected")
			return nil
		}
		log.Info("agent stream ended", "err", err)
		return err
	case err := <-writeErr:
		if err != nil {
			return err
		}
		cause := sess.Err()
		if errors.Is(cause, fleet.ErrRemoved) {
			log.Info("closing stream of removed node")
		}
		if st := sessionEnded(nodeID, cause); st != nil {
			return st
		}
		return status.Errorf(codes.Aborted, "stream closed: %v", cause)
	}
}

// checkReport refuses a message over the limits on what a node reports.
func checkReport(m *ferryv1.ConnectRequest) error {
	switch msg := m.Msg.(type) {
	case *ferryv1.ConnectRequest_Heartbeat:
		return fleet.CheckHeartbeat(msg.Heartbeat)
	case *ferryv1.ConnectRequest_JobUpdate:
		return fleet.CheckJobUpdate(msg.JobUpdate)
	case *ferryv1.ConnectRequest_JobLog:
		return fleet.CheckJobLog(msg.JobLog)
	}
	return nil
}

// sessionEnded is the status an agent gets when the fleet refuses or ends
// its session because the node was removed or the controller is stopping;
// nil for any other reason.
func sessionEnded(nodeID string, err error) error {
	switch {
	case errors.Is(err, fleet.ErrRemoved):
		return status.Errorf(codes.PermissionDenied, "node %s was removed; re-enroll it with a new token", nodeID)
	case errors.Is(err, fleet.ErrShutdown):
		return status.Error(codes.Unavailable, "controller is shutting down; reconnect later")
	}
	return nil
}

func (s *agentServer) RenewCertificate(ctx context.Context, req *ferryv1.RenewCertificateRequest) (*ferryv1.RenewCertificateResponse, error) {
	c, err := agentID(ctx)
	if err != nil {
		return nil, err
	}
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	cert, err := s.d.CA.Sign(pki.SignRequest{Identity: c.Identity, PublicKey: csr.PublicKey, TTL: s.d.AgentCertTTL, Now: s.d.Now()})
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.d.Fleet.Renewed(c.Identity.Name, cert, c.Cert.SerialNumber.String()); err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "renew certificate for %s: %v", c.Identity.Name, err)
	}
	s.d.Logger.Info("agent certificate renewed", "node", c.Identity.Name, "expires", cert.NotAfter)
	return &ferryv1.RenewCertificateResponse{CertificateDer: cert.Raw}, nil
}

func (s *agentServer) DownloadArtifact(req *ferryv1.DownloadArtifactRequest, stream grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error {
	c, err := agentID(stream.Context())
	if err != nil {
		return err
	}
	if s.d.Downloads == nil {
		return status.Error(codes.Unimplemented, "this controller has no artifact store")
	}
	node, digest := c.Identity.Name, req.GetDigest()
	if err := s.mayFetch(node, digest); err != nil {
		return err
	}
	// One message, reused: SendMsg marshals it (copying the data) before
	// it returns, and this server has no stats handler that keeps
	// messages, so the downloader may refill the buffer afterwards.
	msg := &ferryv1.DownloadArtifactResponse{}
	ctx := stream.Context()
	return toStatus(s.d.Downloads.DownloadRange(ctx, node, digest, req.GetOffset(), req.GetLength(), req.GetMaxChunkSize(), func(c artifact.Chunk) error {
		if err := ctx.Err(); err != nil { // the node was removed (streams.go)
			return err
		}
		msg.Offset, msg.Size, msg.Data = c.Offset, c.Size, c.Data
		return stream.Send(msg)
	}))
}

// mayFetch refuses a download the node's jobs do not need: artifacts
// follow jobs, so a node's certificate reaches no other group's software.
// The digest is checked first so that the refusal names a well-formed one.
func (s *agentServer) mayFetch(node, digest string) error {
	if _, err := sha256digest.Parse(digest); err != nil {
		return status.Errorf(codes.InvalidArgument, "download artifact: %v", err)
	}
	// A transcoded form goes with its original: a node may fetch it when
	// its jobs use the original.
	if s.d.Artifacts != nil {
		if orig, ok := s.d.Artifacts.OriginalOf(digest); ok {
			digest = orig
		}
	}
	if s.d.JobArtifacts == nil || !s.d.JobArtifacts.NodeMayFetch(node, digest) {
		return status.Errorf(codes.PermissionDenied, "node %s has no job that uses artifact %s; a node downloads only the artifacts of the rollout jobs sent to it", node, digest)
	}
	return nil
}
