package server

import (
	"context"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Groups is the part of the rollout engine that keeps groups' desired
// state and catch-up settings.
type Groups interface {
	Group(name string) (*ferryv1.Group, error)
	UpdateGroup(actor string, req *ferryv1.UpdateGroupRequest) (*ferryv1.Group, error)
}

type groupServer struct {
	ferryv1.UnimplementedGroupServiceServer
	g Groups
}

func (s *groupServer) GetGroup(_ context.Context, req *ferryv1.GetGroupRequest) (*ferryv1.GetGroupResponse, error) {
	g, err := s.g.Group(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GetGroupResponse{Group: g}, nil
}

// UpdateGroup is audited by the engine, in the transaction that saves the
// change.
func (s *groupServer) UpdateGroup(ctx context.Context, req *ferryv1.UpdateGroupRequest) (*ferryv1.UpdateGroupResponse, error) {
	g, err := s.g.UpdateGroup(rpc.CallerName(ctx), req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.UpdateGroupResponse{Group: g}, nil
}
