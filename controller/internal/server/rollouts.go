package server

import (
	"context"

	"google.golang.org/grpc"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Rollouts is the part of the rollout engine the API needs.
type Rollouts interface {
	Create(ctx context.Context, actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.CreateRolloutResponse, error)
	Get(id string) (*ferryv1.Rollout, error)
	NodeJob(rolloutID, nodeID string) (*ferryv1.NodeJob, bool)
	List(pkg string, limit int) []*ferryv1.Rollout
	NodeJobs(nodeID string) []*ferryv1.NodeJobRecord
	Watch(ctx context.Context, id string) (<-chan *ferryv1.WatchRolloutResponse, error)
	Promote(actor, id string) (*ferryv1.Rollout, error)
	Pause(actor, id string) (*ferryv1.Rollout, error)
	Resume(actor, id string) (*ferryv1.Rollout, error)
	Abort(actor, id string) (*ferryv1.Rollout, error)
	Undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.UndoRolloutResponse, error)
	// PackageUsers lists the active rollouts that use a package version
	// and the nodes that have it installed.
	PackageUsers(name, version string) (rollouts, nodes []string)
	// ArtifactsInUse maps the digests rollouts may still send to nodes to
	// those rollouts.
	ArtifactsInUse() map[string][]string
	// Leading is nil while this controller runs the rollouts: the users
	// and the in-use set above are complete only then (several
	// controllers: only on the leader, where such calls are forwarded).
	Leading() error
}

type rolloutServer struct {
	ferryv1.UnimplementedRolloutServiceServer
	d *Deps
	r Rollouts
}

func (s *rolloutServer) CreateRollout(ctx context.Context, req *ferryv1.CreateRolloutRequest) (*ferryv1.CreateRolloutResponse, error) {
	resp, err := s.r.Create(ctx, rpc.CallerName(ctx), req)
	return resp, toStatus(err)
}

func (s *rolloutServer) GetRollout(ctx context.Context, req *ferryv1.GetRolloutRequest) (*ferryv1.GetRolloutResponse, error) {
	r, err := s.r.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GetRolloutResponse{Rollout: r}, nil
}

func (s *rolloutServer) WatchRollout(req *ferryv1.WatchRolloutRequest, stream grpc.ServerStreamingServer[ferryv1.WatchRolloutResponse]) error {
	ch, err := s.r.Watch(stream.Context(), req.GetId())
	if err != nil {
		return toStatus(err)
	}
	for ev := range ch {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (s *rolloutServer) ListRollouts(ctx context.Context, req *ferryv1.ListRolloutsRequest) (*ferryv1.ListRolloutsResponse, error) {
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 50
	}
	return &ferryv1.ListRolloutsResponse{Rollouts: s.r.List(req.GetPackageName(), limit)}, nil
}

func (s *rolloutServer) PromoteRollout(ctx context.Context, req *ferryv1.PromoteRolloutRequest) (*ferryv1.PromoteRolloutResponse, error) {
	r, err := s.r.Promote(rpc.CallerName(ctx), req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.PromoteRolloutResponse{Rollout: r}, nil
}

func (s *rolloutServer) PauseRollout(ctx context.Context, req *ferryv1.PauseRolloutRequest) (*ferryv1.PauseRolloutResponse, error) {
	r, err := s.r.Pause(rpc.CallerName(ctx), req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.PauseRolloutResponse{Rollout: r}, nil
}

func (s *rolloutServer) ResumeRollout(ctx context.Context, req *ferryv1.ResumeRolloutRequest) (*ferryv1.ResumeRolloutResponse, error) {
	r, err := s.r.Resume(rpc.CallerName(ctx), req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ResumeRolloutResponse{Rollout: r}, nil
}

func (s *rolloutServer) AbortRollout(ctx context.Context, req *ferryv1.AbortRolloutRequest) (*ferryv1.AbortRolloutResponse, error) {
	r, err := s.r.Abort(rpc.CallerName(ctx), req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.AbortRolloutResponse{Rollout: r}, nil
}

func (s *rolloutServer) UndoRollout(ctx context.Context, req *ferryv1.UndoRolloutRequest) (*ferryv1.UndoRolloutResponse, error) {
	resp, err := s.r.Undo(rpc.CallerName(ctx), req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}
