package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// ListNodes pages: a page holds at most maxPageSize nodes and stops before
// pageBudget bytes, far below any message limit, whatever the fleet holds.
const (
	defaultPageSize = 500
	maxPageSize     = 1000
	pageBudget      = 2 << 20
	// maxWatchesPerAdmin bounds the WatchNodes streams one admin identity
	// holds at once.
	maxWatchesPerAdmin = 16
)

type nodeServer struct {
	ferryv1.UnimplementedNodeServiceServer
	d       *Deps
	watches *watchLimit
}

func (s *nodeServer) ListNodes(ctx context.Context, req *ferryv1.ListNodesRequest) (*ferryv1.ListNodesResponse, error) {
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	f := fleet.Filter{Group: req.GetGroup(), States: req.GetStates(), HideRemoved: req.GetHideRemoved()}
	nodes, next := s.d.Fleet.Page(f, after, size, pageBudget)
	resp := &ferryv1.ListNodesResponse{Nodes: nodes}
	if next != "" {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return resp, nil
}

// GetNode jobs: the default and the most a request may ask for.
const (
	defaultNodeJobs = 10
	maxNodeJobs     = 100
)

// GetNode returns a node with its history from the rollout records.
func (s *nodeServer) GetNode(ctx context.Context, req *ferryv1.GetNodeRequest) (*ferryv1.GetNodeResponse, error) {
	n, ok := s.d.Fleet.Node(req.GetId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %q: not found; list nodes with `ferryctl nodes --all`", req.GetId())
	}
	limit := int(req.GetJobs())
	switch {
	case limit == 0:
		limit = defaultNodeJobs
	case limit > maxNodeJobs:
		limit = maxNodeJobs
	}
	resp := &ferryv1.GetNodeResponse{Node: n, InstalledBy: map[string]string{}}
	all := s.d.Rollouts.NodeJobs(n.Id)
	resp.Jobs = all[:min(limit, len(all))]
	installed := map[string]bool{}
	for _, p := range n.GetInstalled() {
		installed[p.GetName()+"@"+p.GetVersion()] = true
	}
	for _, j := range all {
		if resp.LastFailure == nil && j.GetJob().GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_FAILED {
			resp.LastFailure = j
		}
		ref := j.GetPackageName() + "@" + j.GetPackageVersion()
		if _, seen := resp.InstalledBy[ref]; !seen && installed[ref] && j.GetJobKind() == ferryv1.JobKind_JOB_KIND_INSTALL &&
			j.GetJob().GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED {
			resp.InstalledBy[ref] = j.GetRolloutId()
		}
	}
	return resp, nil
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	after, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || pki.ValidateName("node ID", string(after)) != nil {
		return "", status.Errorf(codes.InvalidArgument, "page token %.40q is not one ListNodes returned; start again without it", tok)
	}
	return string(after), nil
}

// WatchNodes sends a compact event per node, then one for each node whose
// state, group or connection changed, and one when a node is purged. With
// a group, a node moved out of it is reported once, with its new group.
// States also change by time passing (a heartbeat going stale), so the
// watch re-evaluates every second as well as on every registry change. It
// keeps a few words per node, never whole nodes.
func (s *nodeServer) WatchNodes(req *ferryv1.WatchNodesRequest, stream grpc.ServerStreamingServer[ferryv1.WatchNodesResponse]) error {
	c, err := caller(stream.Context())
	if err != nil {
		return err
	}
	release, err := s.watches.acquire(c.Identity.String())
	if err != nil {
		return err
	}
	defer release()
	type seen struct {
		group     string
		state     ferryv1.NodeState
		connected bool
	}
	states := fleet.Filter{States: req.GetStates(), HideRemoved: req.GetHideRemoved()}
	var last map[string]seen
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changes := s.d.Fleet.Changes()
		// Every node is followed, so one moved out of the group is told
		// apart from one purged.
		cur := s.d.Fleet.Statuses(fleet.Filter{})
		next := make(map[string]seen, len(cur))
		for _, n := range cur {
			now := seen{n.Group, n.State, n.Connected}
			next[n.ID] = now
			prev, known := last[n.ID]
			if known && prev == now {
				continue
			}
			if g := req.GetGroup(); g != "" && n.Group != g && (!known || prev.group != g) {
				continue
			}
			// The filter on states picks what the first listing shows;
			// a node's later changes are all sent.
			if last == nil && !states.Match(n.Group, n.State) {
				continue
			}
			ev := &ferryv1.NodeEvent{Id: n.ID, Group: n.Group, State: n.State, StateReason: n.Reason, Connected: n.Connected}
			if err := stream.Send(&ferryv1.WatchNodesResponse{Event: ev}); err != nil {
				return err
			}
		}
		for id, prev := range last {
			if g := req.GetGroup(); g != "" && prev.group != g {
				continue
			}
			if _, ok := next[id]; !ok {
				if err := stream.Send(&ferryv1.WatchNodesResponse{Event: &ferryv1.NodeEvent{Id: id, Group: prev.group, Purged: true}}); err != nil {
					return err
				}
			}
		}
		last = next
		select {
		case <-stream.Context().Done():
			return nil
		case <-changes:
		case <-tick.C:
		}
	}
}

// watchLimit counts the watches each admin identity holds.
type watchLimit struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newWatchLimit(limit int) *watchLimit { return &watchLimit{max: limit, n: map[string]int{}} }

func (w *watchLimit) acquire(who string) (release func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n[who] >= w.max {
		return nil, status.Errorf(codes.ResourceExhausted, "%s already holds %d node watches, the most one admin may hold; end one (ferryctl nodes --watch) and try again", who, w.max)
	}
	w.n[who]++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.n[who]--; w.n[who] == 0 {
			delete(w.n, who)
		}
	}, nil
}

func (s *nodeServer) RemoveNode(ctx context.Context, req *ferryv1.RemoveNodeRequest) (*ferryv1.RemoveNodeResponse, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	id := req.GetId()
	n, ok := s.d.Fleet.Node(id)
	if !req.GetPurge() || !ok || n.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED {
		ev := s.d.auditEvent(ctx, "node.remove", id, "")
		var rotateErr error
		n, rotateErr, err = s.d.removeNode(id, c.Identity.String(), ev)
		if err != nil {
			s.d.refused(ev, err)
			if _, ok := s.d.Fleet.Node(id); ok && !errors.Is(err, store.ErrAudit) {
				return nil, status.Error(codes.FailedPrecondition, err.Error())
			}
			return nil, toStatus(err)
		}
		s.d.streams.recheck(pki.Identity{Role: pki.RoleAgent, Name: id})
		if rotateErr != nil {
			return nil, status.Errorf(codes.Internal, "node %s was removed, but the gossip key was not rotated (%v), so its copy still works in gossip; run `ferryctl gossip rotate-key`", id, rotateErr)
		}
	}
	if !req.GetPurge() {
		return &ferryv1.RemoveNodeResponse{Node: n}, nil
	}
	ev := s.d.auditEvent(ctx, "node.purge", id, "")
	if err := s.d.Fleet.Purge(id, ev); err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	return &ferryv1.RemoveNodeResponse{Node: n, Purged: true}, nil
}

func (s *nodeServer) LabelNode(ctx context.Context, req *ferryv1.LabelNodeRequest) (*ferryv1.LabelNodeResponse, error) {
	if len(req.GetSet()) == 0 && len(req.GetRemove()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no label change: give key=value to set a label or key- to remove one")
	}
	var detail []string
	if len(req.GetSet()) > 0 {
		detail = append(detail, "set "+labels.Format(req.GetSet()))
	}
	if len(req.GetRemove()) > 0 {
		detail = append(detail, "remove "+strings.Join(req.GetRemove(), ","))
	}
	n, err := s.updateNode(ctx, "node.label", req.GetId(), strings.Join(detail, " "), func(rec *store.NodeRecord) error {
		out, err := labels.Apply(rec.Labels, req.GetSet(), req.GetRemove())
		if err != nil {
			return fmt.Errorf("node %s: %w", rec.ID, err)
		}
		rec.Labels = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &ferryv1.LabelNodeResponse{Node: n}, nil
}

func (s *nodeServer) MoveNode(ctx context.Context, req *ferryv1.MoveNodeRequest) (*ferryv1.MoveNodeResponse, error) {
	if err := pki.ValidateName("group", req.GetGroup()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var from string
	n, err := s.updateNode(ctx, "node.move", req.GetId(), "group="+req.GetGroup(), func(rec *store.NodeRecord) error {
		from, rec.Group = rec.Group, req.GetGroup()
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.d.Logger.Info("node moved", "node", n.GetId(), "from", from, "group", n.GetGroup())
	return &ferryv1.MoveNodeResponse{Node: n}, nil
}

// updateNode applies an admin's change to a node's record, audited in the
// same store transaction; a refused change is audited with its error.
func (s *nodeServer) updateNode(ctx context.Context, action, id, detail string, change func(*store.NodeRecord) error) (*ferryv1.Node, error) {
	ev := s.d.auditEvent(ctx, action, id, detail)
	n, err := s.d.Fleet.Update(id, change, ev)
	if err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	return n, nil
}
