package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Relaying: a controller that does not lead sends what its agents report
// to the leader on one Relay stream, and puts what the leader answers on
// the agents' streams. The leader treats a relayed agent like one of its
// own (Sink), so its engine sees every node of the installation.

// Sink is what relayed agent traffic does on the leader.
type Sink interface {
	// Attach opens node's relayed stream in the leader's fleet and tells
	// the engine (its hello's recent jobs).
	Attach(ctx context.Context, via, node, addr string, hello *ferryv1.AgentHello) (Relayed, error)
	Heartbeat(node string, hb *ferryv1.Heartbeat)
	JobUpdate(node string, u *ferryv1.JobUpdate)
}

// Relayed is one relayed agent stream on the leader.
type Relayed interface {
	// Outbox has the messages for the agent.
	Outbox() <-chan *ferryv1.ConnectResponse
	// Done is closed when the leader ends the session.
	Done() <-chan struct{}
	Detach(left bool)
}

// Service is ClusterService on every controller; only the leader accepts
// relays.
type Service struct {
	ferryv1.UnimplementedClusterServiceServer
	c    *Cluster
	sink Sink
}

// NewService serves relays into sink.
func NewService(c *Cluster, sink Sink) *Service { return &Service{c: c, sink: sink} }

// maxRelayedNodes bounds the sessions one relay may open.
const maxRelayedNodes = 100_000

// Relay is the leader's end of a relay stream.
func (s *Service) Relay(stream grpc.BidiStreamingServer[ferryv1.RelayRequest, ferryv1.RelayResponse]) error {
	if !s.c.Leading() {
		l, _ := s.c.Leader()
		return status.Error(codes.FailedPrecondition, (&NotLeaderError{ID: s.c.ID(), Leader: l}).Error())
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	via := first.GetHello().GetControllerId()
	if via == "" {
		return status.Error(codes.InvalidArgument, "the first message of a relay must be its hello")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var sendMu sync.Mutex
	send := func(m *ferryv1.RelayResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	var wg sync.WaitGroup
	nodes := map[string]Relayed{}
	defer func() {
		for _, r := range nodes {
			r.Detach(false)
		}
		cancel()
		wg.Wait()
	}()
	// Leadership lost: end the stream, so the relay finds the new leader.
	go func() {
		for {
			ch := s.c.Changes()
			if !s.c.Leading() {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
		}
	}()
	recvd := make(chan *ferryv1.RelayRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case recvd <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var m *ferryv1.RelayRequest
		select {
		case <-ctx.Done():
			return status.Error(codes.Unavailable, "this controller stopped leading")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case m = <-recvd:
		}
		switch msg := m.Msg.(type) {
		case *ferryv1.RelayRequest_Attached:
			node := msg.Attached.GetNodeId()
			if old := nodes[node]; old != nil {
				old.Detach(false)
				delete(nodes, node)
			}
			if len(nodes) >= maxRelayedNodes {
				return status.Errorf(codes.ResourceExhausted, "relay from %s holds more than %d agent streams", via, maxRelayedNodes)
			}
			r, err := s.sink.Attach(ctx, via, node, msg.Attached.GetAddress(), msg.Attached.GetHello())
			if err != nil {
				s.c.log.Warn("relayed agent refused", "node", node, "via", via, "err", err)
				continue
			}
			nodes[node] = r
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-r.Done():
						return
					case out := <-r.Outbox():
						if err := send(&ferryv1.RelayResponse{NodeId: node, Msg: out}); err != nil {
							cancel()
							return
						}
					}
				}
			}()
		case *ferryv1.RelayRequest_Heartbeat:
			if nodes[msg.Heartbeat.GetNodeId()] != nil {
				s.sink.Heartbeat(msg.Heartbeat.GetNodeId(), msg.Heartbeat.GetHeartbeat())
			}
		case *ferryv1.RelayRequest_JobUpdate:
			if nodes[msg.JobUpdate.GetNodeId()] != nil {
				s.sink.JobUpdate(msg.JobUpdate.GetNodeId(), msg.JobUpdate.GetUpdate())
			}
		case *ferryv1.RelayRequest_Detached:
			if r := nodes[msg.Detached.GetNodeId()]; r != nil {
				r.Detach(msg.Detached.GetLeft())
				delete(nodes, msg.Detached.GetNodeId())
			}
		}
	}
}

// Relay is a non-leader's end: it keeps the agent streams this controller
// holds and relays their traffic to whichever controller leads.
type Relay struct {
	c       *Cluster
	dial    func(addr string) (grpc.ClientConnInterface, func(), error)
	deliver func(node string, msg *ferryv1.ConnectResponse)

	mu    sync.Mutex
	nodes map[string]*relayedNode
	out   chan *ferryv1.RelayRequest // nil while no stream is up
	kick  context.CancelFunc         // ends the current stream (queue overflow)
}

type relayedNode struct {
	addr   string
	hello  *ferryv1.AgentHello
	latest []*ferryv1.JobUpdate // the last report of each recent job
}

// maxLatest bounds the job reports kept per node for a new leader.
const maxLatest = 16

// NewRelay relays through streams dial opens (to a controller's gRPC
// address, with this controller's certificate); deliver puts a message
// from the leader on the node's local stream.
func NewRelay(c *Cluster, dial func(addr string) (grpc.ClientConnInterface, func(), error), deliver func(node string, msg *ferryv1.ConnectResponse)) *Relay {
	return &Relay{c: c, dial: dial, deliver: deliver, nodes: map[string]*relayedNode{}}
}

func (r *Relay) enqueue(m *ferryv1.RelayRequest) {
	if r.out == nil {
		return
	}
	select {
	case r.out <- m:
	default:
		// Too far behind: start again with a fresh snapshot.
		if r.kick != nil {
			r.kick()
		}
	}
}

// Attached records a local agent stream.
func (r *Relay) Attached(node, addr string, hello *ferryv1.AgentHello) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[node] = &relayedNode{addr: addr, hello: hello, latest: append([]*ferryv1.JobUpdate(nil), hello.GetRecentJobs()...)}
	r.enqueue(&ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_Attached{Attached: &ferryv1.RelayAttached{NodeId: node, Address: addr, Hello: hello}}})
}

// Heartbeat relays a heartbeat.
func (r *Relay) Heartbeat(node string, hb *ferryv1.Heartbeat) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodes[node] == nil {
		return
	}
	r.enqueue(&ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_Heartbeat{Heartbeat: &ferryv1.RelayHeartbeat{NodeId: node, Heartbeat: hb}}})
}

// JobUpdate relays a job report, and keeps it for a leader elected later.
func (r *Relay) JobUpdate(node string, u *ferryv1.JobUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[node]
	if n == nil {
		return
	}
	kept := n.latest[:0]
	for _, old := range n.latest {
		if old.GetJobId() != u.GetJobId() {
			kept = append(kept, old)
		}
	}
	n.latest = append(kept, u)
	if len(n.latest) > maxLatest {
		n.latest = n.latest[len(n.latest)-maxLatest:]
	}
	r.enqueue(&ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_JobUpdate{JobUpdate: &ferryv1.RelayJobUpdate{NodeId: node, Update: u}}})
}

// Latest is, for each local agent stream, the last report of each of its
// recent jobs (its hello's, then those relayed since): what a controller
// that starts leading gives its own engine, which did not see the reports
// its agents made while another controller led (that one may have died
// before it stored them).
func (r *Relay) Latest() map[string][]*ferryv1.JobUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]*ferryv1.JobUpdate, len(r.nodes))
	for node, n := range r.nodes {
		out[node] = append([]*ferryv1.JobUpdate(nil), n.latest...)
	}
	return out
}

// Detached records that a local agent stream ended.
func (r *Relay) Detached(node string, left bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.nodes, node)
	r.enqueue(&ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_Detached{Detached: &ferryv1.RelayDetached{NodeId: node, Left: left}}})
}

// Run relays to the leader whenever another controller leads, until ctx
// ends.
func (r *Relay) Run(ctx context.Context) {
	for ctx.Err() == nil {
		ch := r.c.Changes()
		l, ok := r.c.Leader()
		if !ok || l.ID == r.c.ID() || r.c.Leading() {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			case <-time.After(time.Second):
			}
			continue
		}
		if err := r.stream(ctx, l); err != nil && ctx.Err() == nil {
			r.c.log.Warn("relay to the leader", "leader", l.ID, "addr", l.Addr, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

func (r *Relay) stream(ctx context.Context, l Member) error {
	conn, closeConn, err := r.dial(l.Addr)
	if err != nil {
		return err
	}
	defer closeConn()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ferryv1.NewClusterServiceClient(conn).Relay(sctx)
	if err != nil {
		return err
	}
	if err := st.Send(&ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_Hello{Hello: &ferryv1.RelayHello{ControllerId: r.c.ID()}}}); err != nil {
		return err
	}
	out := make(chan *ferryv1.RelayRequest, 4096)
	r.mu.Lock()
	var snap []*ferryv1.RelayRequest
	for node, n := range r.nodes {
		hello := proto.Clone(n.hello).(*ferryv1.AgentHello)
		hello.RecentJobs = n.latest
		snap = append(snap, &ferryv1.RelayRequest{Msg: &ferryv1.RelayRequest_Attached{Attached: &ferryv1.RelayAttached{NodeId: node, Address: n.addr, Hello: hello}}})
	}
	r.out, r.kick = out, cancel
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.out == out {
			r.out, r.kick = nil, nil
		}
		r.mu.Unlock()
	}()
	for _, m := range snap {
		if err := st.Send(m); err != nil {
			return err
		}
	}
	r.c.log.Info("relaying agents to the leader", "leader", l.ID, "addr", l.Addr, "agents", len(snap))
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			r.deliver(m.GetNodeId(), m.GetMsg())
		}
	}()
	for {
		ch := r.c.Changes()
		if cur, ok := r.c.Leader(); !ok || cur.ID != l.ID {
			return nil // a new leader: relay to it
		}
		select {
		case <-sctx.Done():
			return fmt.Errorf("relay stream to %s ended", l.ID)
		case err := <-recvErr:
			return err
		case <-ch:
		case m := <-out:
			if err := st.Send(m); err != nil {
				return err
			}
		}
	}
}
