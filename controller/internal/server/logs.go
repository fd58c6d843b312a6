package server

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

type logServer struct {
	ferryv1.UnimplementedLogServiceServer
	d *Deps
	r Rollouts
}

// logBatch bounds the records of one response.
const logBatch = 512

// logPoll is how often a follower looks for new output, and endPolls how
// many polls without any after the jobs have ended end the follow.
const (
	logPoll  = 300 * time.Millisecond
	endPolls = 3
)

// GetJobLogs sends the stored output of the selected nodes of a rollout,
// node by node, then (with follow) new output until their jobs have ended.
func (s *logServer) GetJobLogs(req *ferryv1.GetJobLogsRequest, stream grpc.ServerStreamingServer[ferryv1.GetJobLogsResponse]) error {
	r, err := s.r.Get(req.GetRolloutId())
	if err != nil {
		return toStatus(err)
	}
	if id := req.GetNodeId(); id != "" {
		if _, ok := s.r.NodeJob(r.GetId(), id); !ok {
			return status.Errorf(codes.NotFound, "node %s is not part of rollout %s; see its nodes with `ferryctl rollout status %s`", id, r.GetId(), r.GetId())
		}
	}
	sent := map[string]uint64{} // node and job -> highest sequence number sent
	step := strings.ToLower(req.GetStep())
	quiet := 0 // polls since the jobs ended that brought nothing new
	for {
		sentBefore := len(sent)
		var total uint64
		for _, v := range sent {
			total += v
		}
		nodes := s.selected(r.GetId(), req)
		if len(nodes) == 0 && req.GetFailed() && !req.GetFollow() {
			return status.Errorf(codes.NotFound, "no node of rollout %s failed or is unreachable; leave out --failed for every node's output", r.GetId())
		}
		for _, n := range nodes {
			recs, err := s.d.Store.JobLogs(r.GetId(), n)
			if err != nil {
				return toStatus(fmt.Errorf("read the output of %s in rollout %s: %w", n, r.GetId(), err))
			}
			var out []*ferryv1.LogRecord
			for _, rec := range recs {
				key := n + "\x00" + rec.GetJobId()
				if rec.GetSeq() <= sent[key] {
					continue
				}
				sent[key] = rec.GetSeq() + rec.GetCutLines() - min(rec.GetCutLines(), 1)
				if step != "" && rec.GetCutLines() == 0 && !strings.Contains(strings.ToLower(rec.GetStep()), step) {
					continue
				}
				out = append(out, rec)
			}
			for len(out) > 0 {
				k := min(len(out), logBatch)
				if err := stream.Send(&ferryv1.GetJobLogsResponse{Records: out[:k]}); err != nil {
					return err
				}
				out = out[k:]
			}
		}
		if !req.GetFollow() {
			return nil
		}
		// Output may land after the job's outcome (an agent that was
		// offline reports the outcome in its hello, then sends the lines
		// it kept): after the end, follow until endPolls polls in a row
		// bring nothing new.
		var now uint64
		for _, v := range sent {
			now += v
		}
		switch {
		case !s.allEnded(r.GetId(), req):
			quiet = 0
		case len(sent) != sentBefore || now != total:
			quiet = 0
		default:
			quiet++
		}
		if quiet >= endPolls {
			return nil
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(logPoll):
		}
	}
}

// selected lists the nodes whose output the request asks for.
func (s *logServer) selected(rolloutID string, req *ferryv1.GetJobLogsRequest) []string {
	r, err := s.r.Get(rolloutID)
	if err != nil {
		return nil
	}
	var ids []string
	for _, n := range r.GetNodes() {
		if req.GetNodeId() != "" && n.GetNodeId() != req.GetNodeId() {
			continue
		}
		if req.GetFailed() && !failedOutcome(n.GetOutcome()) {
			continue
		}
		ids = append(ids, n.GetNodeId())
	}
	return ids
}

func failedOutcome(o ferryv1.NodeOutcome) bool {
	return o == ferryv1.NodeOutcome_NODE_OUTCOME_FAILED || o == ferryv1.NodeOutcome_NODE_OUTCOME_UNREACHABLE
}

// allEnded reports whether no job of the nodes asked for can still write
// output: each node's outcome is final, and with --failed the rollout has
// ended (a node may still fail).
func (s *logServer) allEnded(rolloutID string, req *ferryv1.GetJobLogsRequest) bool {
	r, err := s.r.Get(rolloutID)
	if err != nil {
		return true
	}
	if req.GetFailed() && !rolloutstate.Terminal(r.GetState()) {
		return false
	}
	for _, n := range r.GetNodes() {
		if req.GetNodeId() != "" && n.GetNodeId() != req.GetNodeId() {
			continue
		}
		switch n.GetOutcome() {
		case ferryv1.NodeOutcome_NODE_OUTCOME_PENDING, ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING,
			ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING, ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING:
			if !req.GetFailed() {
				return false
			}
		}
	}
	return true
}
