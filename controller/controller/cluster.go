package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/controller/internal/cluster"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/replica"
	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	"github.com/ferrydeploy/ferry/controller/internal/server"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Several controllers on one etcd store (package cluster): this file wires
// membership, the election, the session table and the relay into the
// controller. On bbolt none of it runs.

// clustered holds what a controller on etcd adds.
type clustered struct {
	cl    *cluster.Cluster
	relay *cluster.Relay
	// engineOn: this controller leads and its engine has reloaded what
	// the previous leader stored; until then the engine does nothing.
	engineOn atomic.Bool

	// toLeader is the connection calls are forwarded on (forwardTo), to
	// the leader at toLeaderAddr.
	toLeaderMu    sync.Mutex
	toLeaderAddr  string
	toLeader      grpc.ClientConnInterface
	closeToLeader func()
}

// forwardWait bounds how long a call only the leader serves waits for an
// election under way before it is answered here (and refused).
func forwardWait(cl *cluster.Cluster) time.Duration { return 2*cl.TTL() + time.Second }

// forwardTo is server.Deps.Leader: the leader when another controller
// leads, to forward the calls only the leader serves. While an election
// is under way it waits for its outcome (forwardWait); this controller
// serves the call itself when it leads or is taking over (the engine
// waits for that), and when it is cut off from etcd or no leader is
// known (the engine refuses, saying why).
func (c *Controller) forwardTo(ctx context.Context) (server.Leader, bool) {
	cc := c.clusterState.Load()
	if cc == nil {
		return server.Leader{}, false
	}
	wait := time.NewTimer(forwardWait(cc.cl))
	defer wait.Stop()
	for {
		ch := cc.cl.Changes()
		if cc.cl.CutOff() != nil || cc.cl.Leading() || cc.engineOn.Load() {
			return server.Leader{}, false
		}
		if l, ok := cc.cl.Leader(); ok && l.ID != cc.cl.ID() {
			conn, err := cc.connTo(l.Addr, c.dialPeer)
			if err != nil {
				c.log.Warn("connect to the leader to forward a call", "leader", l.ID, "addr", l.Addr, "err", err)
				return server.Leader{}, false
			}
			addr := l.Addr
			return server.Leader{ID: l.ID, Addr: addr, Conn: conn, Dial: func() (grpc.ClientConnInterface, func(), error) { return c.dialPeer(addr) }}, true
		}
		select {
		case <-ctx.Done():
			return server.Leader{}, false
		case <-wait.C:
			return server.Leader{}, false
		case <-ch:
		}
	}
}

// connTo returns the connection to the leader at addr, dialled once per
// leader; the one to the previous leader is closed.
func (cc *clustered) connTo(addr string, dial func(string) (grpc.ClientConnInterface, func(), error)) (grpc.ClientConnInterface, error) {
	cc.toLeaderMu.Lock()
	defer cc.toLeaderMu.Unlock()
	if cc.toLeader != nil && cc.toLeaderAddr == addr {
		return cc.toLeader, nil
	}
	conn, closeConn, err := dial(addr)
	if err != nil {
		return nil, err
	}
	if cc.closeToLeader != nil {
		cc.closeToLeader()
	}
	cc.toLeaderAddr, cc.toLeader, cc.closeToLeader = addr, conn, closeConn
	return conn, nil
}

// closeLeaderConn closes the connection calls are forwarded on.
func (cc *clustered) closeLeaderConn() {
	cc.toLeaderMu.Lock()
	defer cc.toLeaderMu.Unlock()
	if cc.closeToLeader != nil {
		cc.closeToLeader()
	}
	cc.toLeaderAddr, cc.toLeader, cc.closeToLeader = "", nil, nil
}

// clusterService is ClusterService: the relay (package cluster) and the
// forwarded calls, which the leader runs through its API (package
// server).
type clusterService struct {
	*cluster.Service
	deps *server.Deps
}

func (s clusterService) Forward(stream grpc.BidiStreamingServer[ferryv1.ForwardRequest, ferryv1.ForwardResponse]) error {
	return s.deps.ServeForward(stream)
}

// gate refuses store writes while the controller is cut off from etcd.
func (c *Controller) gate() error {
	if cc := c.clusterState.Load(); cc != nil {
		return cc.cl.CutOff()
	}
	return nil
}

// leaderFence is the compare the engine's writes carry.
func (c *Controller) leaderFence() ([]clientv3.Cmp, error) {
	if err := c.gate(); err != nil {
		return nil, err
	}
	cc := c.clusterState.Load()
	if cc == nil {
		return nil, nil
	}
	if !cc.engineOn.Load() {
		_, err := cc.cl.Fence()
		if err == nil {
			err = errors.New("this controller is taking over as leader; try again in a moment")
		}
		return nil, err
	}
	return cc.cl.Fence()
}

// engineLeading is the engine's Config.Leading.
func (c *Controller) engineLeading() error {
	cc := c.clusterState.Load()
	if cc == nil {
		return nil
	}
	if err := cc.cl.CutOff(); err != nil {
		return err
	}
	if cc.engineOn.Load() && cc.cl.Leading() {
		return nil
	}
	l, _ := cc.cl.Leader()
	if cc.cl.Leading() || l.ID == cc.cl.ID() {
		// Elected, loading what the previous leader stored.
		return rollout.ErrTakingOver
	}
	return &cluster.NotLeaderError{ID: cc.cl.ID(), Leader: l}
}

// newCluster joins the cluster (after the listeners, so the advertise
// address is known).
func (c *Controller) newCluster() error {
	cl, err := cluster.New(cluster.Config{
		Client: c.etcd, Prefix: c.cfg.Store.Etcd.KeyPrefix(), ID: c.cfg.ControllerID, Addr: c.advertise,
		TTL: c.cfg.ClusterTTL, Logger: c.log.With("component", "cluster"), Now: c.cfg.Now,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*cl.TTL()+5*time.Second)
	defer cancel()
	if err := cl.Join(ctx); err != nil {
		return err
	}
	cc := &clustered{cl: cl}
	cc.relay = cluster.NewRelay(cl, c.dialPeer, func(node string, msg *ferryv1.ConnectResponse) {
		if err := c.fleet.Dispatch(node, msg); err != nil {
			c.log.Debug("deliver a relayed message", "node", node, "err", err)
		}
	})
	c.clusterState.Store(cc)
	c.fleet.SetRemote(func(id string) (ferryv1.NodeState, string, string, bool) {
		if cc.engineOn.Load() {
			return 0, "", "", false // the leader sees relayed streams as its own
		}
		ns, ok := cl.Session(id)
		if !ok || ns.GetControllerId() == cl.ID() {
			return 0, "", "", false
		}
		// The record is rewritten when the state or the reason changes,
		// not when only the ages in the reason do: say when it was.
		why := ns.GetStateReason()
		if at := ns.GetChangedAt(); at != nil && why != "" {
			why += ", as of " + at.AsTime().UTC().Format(time.TimeOnly) + " UTC"
		}
		return ns.GetState(), why, ns.GetControllerId(), true
	})
	return nil
}

// dialPeer opens a connection to another controller with this one's
// certificate (a controller identity: only ClusterService accepts it).
func (c *Controller) dialPeer(addr string) (grpc.ClientConnInterface, func(), error) {
	conf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.serving.Load(), nil }, c.ca.Pool())
	conn, err := grpc.NewClient(addr, rpc.DialOptions(conf)...)
	if err != nil {
		return nil, nil, err
	}
	return conn, func() { _ = conn.Close() }, nil
}

// runCluster runs membership, the election (lead runs while leading), the
// relay, the session table and the followers of other controllers'
// writes, until ctx ends.
func (c *Controller) runCluster(ctx context.Context, cc *clustered, lead func(context.Context)) {
	done := make(chan struct{}, 5)
	go func() {
		defer func() { done <- struct{}{} }()
		_ = cc.cl.Run(ctx, func(lctx context.Context) {
			if err := c.engine.Reload(); err != nil {
				c.log.Error("load rollouts to lead; stepping down", "err", err)
				return
			}
			cc.engineOn.Store(true)
			defer cc.engineOn.Store(false)
			// The reports this controller's own agents made while another
			// led went to that one, which may have died before storing
			// them: the engine takes them now, as it takes a relayed
			// agent's hello.
			for node, recent := range cc.relay.Latest() {
				c.engine.NodeConnected(node, recent)
			}
			c.log.Info("running the rollout engine", "controller", cc.cl.ID())
			lead(lctx)
		})
	}()
	go func() { defer func() { done <- struct{}{} }(); cc.relay.Run(ctx) }()
	go func() { defer func() { done <- struct{}{} }(); c.publishSessions(ctx, cc) }()
	go func() {
		defer func() { done <- struct{}{} }()
		c.store.Follow(ctx, "nodes", func() {
			if err := c.fleet.Reload(); err != nil {
				c.log.Warn("reread nodes", "err", err)
			}
		})
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		c.store.Follow(ctx, "rollouts", func() {
			if !cc.engineOn.Load() {
				if err := c.engine.Reload(); err != nil {
					c.log.Warn("reread rollouts", "err", err)
				}
			}
		})
	}()
	for range 5 {
		<-done
	}
	cc.closeLeaderConn()
}

// publishSessions keeps the session table's records of the agent streams
// this controller holds: written when one opens, closes or changes state,
// never per heartbeat.
func (c *Controller) publishSessions(ctx context.Context, cc *clustered) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ch := c.fleet.Changes()
		local := map[string]bool{}
		for _, n := range c.fleet.List(fleet.Filter{}) {
			if via, ok := c.fleet.Via(n.GetId()); ok && via == "" {
				local[n.GetId()] = true
				if err := cc.cl.Publish(ctx, n.GetId(), n.GetState(), n.GetStateReason()); err != nil && ctx.Err() == nil {
					c.log.Debug("publish agent session", "node", n.GetId(), "err", err)
				}
			}
		}
		for id := range cc.cl.Published() {
			if !local[id] {
				if err := cc.cl.Unpublish(ctx, id); err != nil && ctx.Err() == nil {
					c.log.Debug("unpublish agent session", "node", id, "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
			// coalesce a burst of changes
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		case <-t.C:
		}
	}
}

// clusterEvents relays local agent streams (server.AgentEvents).
type clusterEvents struct{ cc *clustered }

func (e clusterEvents) Attached(node, addr string, hello *ferryv1.AgentHello) {
	e.cc.relay.Attached(node, addr, hello)
}
func (e clusterEvents) Heartbeat(node string, hb *ferryv1.Heartbeat) { e.cc.relay.Heartbeat(node, hb) }
func (e clusterEvents) Detached(node string, left bool)              { e.cc.relay.Detached(node, left) }

// clusterArtifacts is the servers' JobArtifacts on etcd. A follower's
// engine learns a job the leader sent a moment after it was sent (from
// the store), and the agent, on the follower, may ask for the job's
// artifact before that: on a refusal the follower reads the rollouts
// again and asks once more (at most every 100 ms, so refused downloads
// cannot make it reread the store at will).
type clusterArtifacts struct {
	engine *rollout.Engine
	cc     *clustered
	mu     sync.Mutex
	last   time.Time
}

func (a *clusterArtifacts) NodeMayFetch(node, digest string) bool {
	if a.engine.NodeMayFetch(node, digest) {
		return true
	}
	if a.cc.engineOn.Load() {
		return false // the leader's engine is the store's source
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if time.Since(a.last) >= 100*time.Millisecond {
		a.last = time.Now()
		if err := a.engine.Reload(); err != nil {
			return false
		}
	}
	return a.engine.NodeMayFetch(node, digest)
}

// clusterJobs routes agents' reports: to the engine on the leader, through
// the relay elsewhere (job output is stored by whichever controller holds
// the stream: the store is shared).
type clusterJobs struct {
	local jobSink
	cc    *clustered
}

func (j clusterJobs) AgentHello(node string, recent []*ferryv1.JobUpdate) {
	if j.cc.engineOn.Load() {
		j.local.AgentHello(node, recent)
	}
}

func (j clusterJobs) AgentHeartbeat(node string) {
	if j.cc.engineOn.Load() {
		j.local.AgentHeartbeat(node)
	}
}

func (j clusterJobs) HandleJobUpdate(node string, u *ferryv1.JobUpdate) {
	if j.cc.engineOn.Load() {
		j.local.HandleJobUpdate(node, u)
		return
	}
	j.cc.relay.JobUpdate(node, u)
}

func (j clusterJobs) HandleJobLog(node string, l *ferryv1.JobLog) *ferryv1.JobLogAck {
	if !j.cc.engineOn.Load() && !j.local.engine.NodeRanJob(l.GetRolloutId(), node, l.GetJobId()) {
		return nil // this controller may not have read the job yet: the agent sends the lines again
	}
	return j.local.HandleJobLog(node, l)
}

// leaderSink is where the leader puts relayed agents (cluster.Sink).
type leaderSink struct {
	fleet *fleet.Registry
	jobs  jobSink
}

type relayedSession struct {
	s     *fleet.Session
	fleet *fleet.Registry
}

func (r relayedSession) Outbox() <-chan *ferryv1.ConnectResponse { return r.s.Outbox() }
func (r relayedSession) Done() <-chan struct{}                   { return r.s.Done() }
func (r relayedSession) Detach(left bool)                        { r.fleet.Detach(r.s, left) }

func (l leaderSink) Attach(ctx context.Context, via, node, addr string, hello *ferryv1.AgentHello) (cluster.Relayed, error) {
	if err := fleet.CheckHello(hello); err != nil {
		return nil, err
	}
	s, err := l.fleet.AttachRelayed(ctx, via, node, addr, hello)
	if errors.Is(err, fleet.ErrNotEnrolled) {
		// Enrolled on another controller a moment ago, before this one
		// reread the nodes (Follow coalesces): reread now, as the relay
		// does not send the node again.
		if err = l.fleet.Reload(); err == nil {
			s, err = l.fleet.AttachRelayed(ctx, via, node, addr, hello)
		}
	}
	if err != nil {
		return nil, err
	}
	l.jobs.AgentHello(node, hello.GetRecentJobs())
	return relayedSession{s: s, fleet: l.fleet}, nil
}

func (l leaderSink) Heartbeat(node string, hb *ferryv1.Heartbeat) {
	l.fleet.Heartbeat(node, hb)
	l.jobs.AgentHeartbeat(node)
}

func (l leaderSink) JobUpdate(node string, u *ferryv1.JobUpdate) { l.jobs.HandleJobUpdate(node, u) }

var _ server.AgentEvents = clusterEvents{}

// clusterPeers are the other live controllers for the replicator: the
// cluster's membership.
type clusterPeers struct{ c *Controller }

func (p clusterPeers) Peers() []replica.Peer {
	cc := p.c.clusterState.Load()
	if cc == nil {
		return nil
	}
	var out []replica.Peer
	for _, m := range cc.cl.Others() {
		pr := replica.Peer{ID: m.ID, Addr: m.Addr}
		if p.c.cfg.peerFilter == nil || p.c.cfg.peerFilter(pr) {
			out = append(out, pr)
		}
	}
	return out
}

// Leading says whether this controller runs the rollout engine now: on
// bbolt always; on etcd while it leads and has loaded what the previous
// leader stored.
func (c *Controller) Leading() bool {
	cc := c.clusterState.Load()
	return cc == nil || cc.engineOn.Load()
}
