package server

// Peer exchange, the controller's side (docs/packages.md "Peer
// exchange"): agents ask which pieces of a download they should fetch
// from the controller and which from peers (GetPieces), whether a peer
// may have a download's pieces (AuthorizePeer), and report a peer that
// served bad bytes (ReportBadPeer). Every digest is scoped to the jobs of
// the nodes involved, as downloads are (mayFetch).

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// msgPeerExchangeOff is the message of GetPieces on a controller started
// with --peer-exchange=false.
const msgPeerExchangeOff = "peer exchange is off on this controller; agents download from the controller"

// Bad-peer reports one node may make: at most badReportBurst within
// badReportWindow, the rest are refused, so a node cannot flood the
// controller's log or other nodes' reasons.
const (
	badReportBurst  = 5
	badReportWindow = time.Minute
)

// maxNodeIDLen bounds a node ID a request names.
const maxNodeIDLen = fleet.MaxFactLen

// Counter counts events for the metrics.
type Counter interface{ Inc() }

func (s *agentServer) GetPieces(ctx context.Context, req *ferryv1.GetPiecesRequest) (*ferryv1.GetPiecesResponse, error) {
	c, err := agentID(ctx)
	if err != nil {
		return nil, err
	}
	if s.d.Tracker == nil || s.d.Artifacts == nil {
		return nil, status.Error(codes.FailedPrecondition, msgPeerExchangeOff)
	}
	node, digest := c.Identity.Name, req.GetDigest()
	if err := s.mayFetch(node, digest); err != nil {
		return nil, err
	}
	p, err := s.d.Artifacts.Pieces(ctx, digest)
	if err != nil {
		return nil, toStatus(err)
	}
	if n := len(req.GetHave()); n > p.Count() {
		return nil, status.Errorf(codes.InvalidArgument, "get pieces of %s: %d pieces named as held, but it has %d pieces", digest, n, p.Count())
	}
	for _, i := range req.GetHave() {
		if int(i) >= p.Count() {
			return nil, status.Errorf(codes.InvalidArgument, "get pieces of %s: piece %d named as held, but it has %d pieces (0 to %d)", digest, i, p.Count(), p.Count()-1)
		}
	}
	serves := s.d.Fleet.PeerAddr(node) != ""
	answer := s.d.Tracker.Ask(digest, node, p.Count(), req.GetHave(), serves)
	resp := &ferryv1.GetPiecesResponse{Size: p.Size, Pieces: make([]*ferryv1.Piece, p.Count())}
	addrs := map[string]string{} // of the nodes named, "" for one not reachable now
	for i, a := range answer {
		off, length := p.Range(i)
		piece := &ferryv1.Piece{Offset: off, Length: uint32(length), Digest: p.Digests[i], Seed: a.Seed} //nolint:gosec // a piece is at most artifact.PieceSizeFor of 4096 pieces, far below 4 GiB for any disk
		for _, h := range a.Holders {
			addr, ok := addrs[h]
			if !ok {
				addr = s.d.Fleet.PeerAddr(h)
				addrs[h] = addr
				if addr != "" {
					resp.Peers = append(resp.Peers, &ferryv1.PeerAddress{NodeId: h, Address: addr})
				}
			}
			if addr != "" {
				piece.Holders = append(piece.Holders, h)
			}
		}
		resp.Pieces[i] = piece
	}
	return resp, nil
}

func (s *agentServer) AuthorizePeer(ctx context.Context, req *ferryv1.AuthorizePeerRequest) (*ferryv1.AuthorizePeerResponse, error) {
	c, err := agentID(ctx)
	if err != nil {
		return nil, err
	}
	server, peer, digest := c.Identity.Name, req.GetNodeId(), req.GetDigest()
	if err := checkNodeID(peer); err != nil {
		return nil, err
	}
	// The serving node must be entitled to the download itself, so that a
	// node cannot learn which artifacts other nodes' jobs use.
	if err := s.mayFetch(server, digest); err != nil {
		return nil, err
	}
	deny := func(format string, args ...any) (*ferryv1.AuthorizePeerResponse, error) {
		return &ferryv1.AuthorizePeerResponse{Reason: fmt.Sprintf(format, args...)}, nil
	}
	if s.d.Tracker == nil {
		return deny("%s", msgPeerExchangeOff)
	}
	if peer == server {
		return deny("node %s asked itself for pieces", peer)
	}
	n, ok := s.d.Fleet.Node(peer)
	switch {
	case !ok:
		return deny("%s is not an enrolled node", peer)
	case n.GetState() == ferryv1.NodeState_NODE_STATE_REMOVED:
		return deny("node %s was removed", peer)
	}
	if err := s.mayFetch(peer, digest); err != nil {
		return deny("node %s has no current or recent job that uses %s", peer, digest)
	}
	return &ferryv1.AuthorizePeerResponse{Allowed: true}, nil
}

func (s *agentServer) ReportBadPeer(ctx context.Context, req *ferryv1.ReportBadPeerRequest) (*ferryv1.ReportBadPeerResponse, error) {
	c, err := agentID(ctx)
	if err != nil {
		return nil, err
	}
	if s.d.Tracker == nil || s.d.Artifacts == nil {
		return nil, status.Error(codes.FailedPrecondition, msgPeerExchangeOff)
	}
	reporter, bad, digest := c.Identity.Name, req.GetNodeId(), req.GetDigest()
	if err := checkNodeID(bad); err != nil {
		return nil, err
	}
	if bad == reporter {
		return nil, status.Errorf(codes.InvalidArgument, "report bad peer: node %s reported itself", reporter)
	}
	if _, err := sha256digest.Parse(req.GetGotDigest()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "report bad peer: got_digest: %v", err)
	}
	if err := s.mayFetch(reporter, digest); err != nil {
		return nil, err
	}
	p, err := s.d.Artifacts.Pieces(ctx, digest)
	if err != nil {
		return nil, toStatus(err)
	}
	i := int(req.GetIndex())
	switch {
	case i >= p.Count():
		return nil, status.Errorf(codes.InvalidArgument, "report bad peer: %s has %d pieces, not a piece %d", digest, p.Count(), i)
	case req.GetGotDigest() == p.Digests[i]:
		return nil, status.Errorf(codes.InvalidArgument, "report bad peer: piece %d of %s hashing to %s is the right piece; report only bytes that do not match", i, digest, req.GetGotDigest())
	case !s.d.Tracker.Known(digest, bad):
		return nil, status.Errorf(codes.FailedPrecondition, "report bad peer: this controller did not name node %s as a holder of %s", bad, digest)
	}
	if !s.d.badReports.allow(reporter, s.d.Now()) {
		return nil, status.Errorf(codes.ResourceExhausted, "report bad peer: node %s reported %d bad peers within %s, the most this controller records; the report of %s was not recorded", reporter, badReportBurst, badReportWindow, bad)
	}
	s.d.Tracker.Ban(digest, bad)
	name := digest
	if f, err := s.d.Artifacts.LookupForm(digest); err == nil {
		name = artifact.Key(f.Rec)
	}
	now := s.d.Now()
	s.d.Fleet.NoteBadPiece(bad, fmt.Sprintf("served a corrupt piece of %s to %s at %s", name, reporter, now.UTC().Format(time.RFC3339)))
	s.d.Logger.Warn("a node served a corrupt piece to a peer; it is no longer named as a holder of this artifact", "node", bad, "peer", reporter, "artifact", name, "digest", digest, "piece", i, "want", p.Digests[i], "got", req.GetGotDigest())
	if s.d.BadPieces != nil {
		s.d.BadPieces.Inc()
	}
	return &ferryv1.ReportBadPeerResponse{}, nil
}

func checkNodeID(id string) error {
	switch {
	case id == "":
		return status.Error(codes.InvalidArgument, "node_id is empty: name the peer")
	case len(id) > maxNodeIDLen:
		return status.Errorf(codes.InvalidArgument, "node_id is %d bytes: at most %d are accepted", len(id), maxNodeIDLen)
	}
	return nil
}

// reportLimit counts each node's bad-peer reports in the last window.
type reportLimit struct {
	mu  sync.Mutex
	at  map[string][]time.Time
	gcd time.Time // last sweep of nodes with no recent report
}

func (l *reportLimit) allow(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = map[string][]time.Time{}
	}
	if now.Sub(l.gcd) > badReportWindow {
		for n, ts := range l.at {
			if len(ts) == 0 || now.Sub(ts[len(ts)-1]) > badReportWindow {
				delete(l.at, n)
			}
		}
		l.gcd = now
	}
	ts := l.at[node]
	k := 0
	for _, t := range ts {
		if now.Sub(t) < badReportWindow {
			ts[k] = t
			k++
		}
	}
	ts = ts[:k]
	if len(ts) >= badReportBurst {
		l.at[node] = ts
		return false
	}
	l.at[node] = append(ts, now)
	return true
}
