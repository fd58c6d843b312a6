package server

import (
	"context"
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

type nodeServer struct {
	ferryv1.UnimplementedNodeServiceServer
	d *Deps
}

func (s *nodeServer) ListNodes(ctx context.Context, req *ferryv1.ListNodesRequest) (*ferryv1.ListNodesResponse, error) {
	return &ferryv1.ListNodesResponse{Nodes: s.d.Fleet.List(fleet.Filter{Group: req.GetGroup(), States: req.GetStates()})}, nil
}

// WatchNodes sends the current list, then each node whose view changed.
// States also change by time passing (a heartbeat going stale), so the
// watch re-evaluates every second as well as on every registry change.
func (s *nodeServer) WatchNodes(req *ferryv1.WatchNodesRequest, stream grpc.ServerStreamingServer[ferryv1.WatchNodesResponse]) error {
	f := fleet.Filter{Group: req.GetGroup(), States: req.GetStates()}
	last := map[string]*ferryv1.Node{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changes := s.d.Fleet.Changes()
		for _, n := range s.d.Fleet.List(fleet.Filter{Group: f.Group}) {
			prev := last[n.Id]
			cmp := proto.Clone(n).(*ferryv1.Node)
			// Only a change a watcher cares about is sent: the reason
			// names the heartbeat's age, which changes every second.
			cmp.LastHeartbeat, cmp.Uptime, cmp.Load1, cmp.DiskFreeBytes, cmp.StateReason = nil, nil, 0, 0, ""
			cmp.Disks = nil
			if prev != nil && proto.Equal(prev, cmp) {
				continue
			}
			last[n.Id] = cmp
			if prev == nil && len(f.States) > 0 && !slices.Contains(f.States, n.State) {
				continue
			}
			if err := stream.Send(&ferryv1.WatchNodesResponse{Node: n}); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changes:
		case <-tick.C:
		}
	}
}

func (s *nodeServer) RemoveNode(ctx context.Context, req *ferryv1.RemoveNodeRequest) (*ferryv1.RemoveNodeResponse, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	ev := s.d.auditEvent(ctx, "node.remove", req.GetId(), "")
	n, err := s.d.Fleet.Remove(req.GetId(), c.Identity.String(), ev)
	if err != nil {
		s.d.refused(ev, err)
		if _, ok := s.d.Fleet.Node(req.GetId()); ok && !errors.Is(err, store.ErrAudit) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, toStatus(err)
	}
	s.d.streams.recheck(pki.Identity{Role: pki.RoleAgent, Name: req.GetId()})
	return &ferryv1.RemoveNodeResponse{Node: n}, nil
}
