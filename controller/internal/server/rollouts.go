package server

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	Undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.Rollout, error)
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
	r, err := s.r.Undo(rpc.CallerName(ctx), req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.UndoRolloutResponse{Rollout: r}, nil
}

type logServer struct {
	ferryv1.UnimplementedLogServiceServer
	d *Deps
	r Rollouts
}

// GetJobLogs sends the stored output, then (with follow) new output until
// the node's job in the rollout has ended.
func (s *logServer) GetJobLogs(req *ferryv1.GetJobLogsRequest, stream grpc.ServerStreamingServer[ferryv1.GetJobLogsResponse]) error {
	if _, err := s.r.Get(req.GetRolloutId()); err != nil {
		return toStatus(err)
	}
	if _, ok := s.r.NodeJob(req.GetRolloutId(), req.GetNodeId()); !ok {
		return status.Errorf(codes.NotFound, "node %s is not part of rollout %s", req.GetNodeId(), req.GetRolloutId())
	}
	var sent uint64 // bytes of the log already sent, by total offset
	final := false
	for {
		text, total, err := s.d.Store.JobLog(req.GetRolloutId(), req.GetNodeId())
		if err != nil {
			return toStatus(err)
		}
		if total > sent {
			chunk := text
			if n := total - sent; n < uint64(len(text)) {
				chunk = text[uint64(len(text))-n:]
			} else if sent > 0 {
				chunk = "[... output dropped: the stored log keeps the last 256 KiB ...]\n" + text
			}
			if err := stream.Send(&ferryv1.GetJobLogsResponse{Text: chunk, At: timestamppb.New(s.d.Now())}); err != nil {
				return err
			}
			sent = total
		}
		if !req.GetFollow() || final {
			return nil
		}
		// Output appended just before the job ended may land after its
		// outcome: read once more after the end is seen.
		final = jobEnded(s.r, req.GetRolloutId(), req.GetNodeId())
		if final {
			continue
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func jobEnded(r Rollouts, rolloutID, nodeID string) bool {
	n, ok := r.NodeJob(rolloutID, nodeID)
	if !ok {
		return true
	}
	switch n.GetOutcome() {
	case ferryv1.NodeOutcome_NODE_OUTCOME_PENDING, ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING,
		ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING, ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING:
		return false
	}
	return true
}
