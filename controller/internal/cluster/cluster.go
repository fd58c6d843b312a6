// Package cluster makes several controllers on one etcd store serve one
// installation: each registers itself under an etcd lease (membership),
// one of them is elected leader to run what must run once (the rollout
// engine, catch-up, job log expiry), each publishes which agent streams it
// holds (the session table), and the others relay their agents' traffic to
// the leader over ClusterService (relay.go).
//
// Keys, under the store's etcd prefix P:
//
//	P/members/<id>     ControllerMember, under the controller's lease
//	P/leader/<lease>   the election (go.etcd.io/etcd/client/v3/concurrency)
//	P/sessions/<node>  NodeSession, under the lease of the controller holding the stream
//
// Nothing is written per heartbeat: a session record changes when a stream
// opens or ends or the node's state changes.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// DefaultTTL is the lease of a controller's membership, leadership and
// sessions: a controller that dies is replaced as leader within about
// this long.
const DefaultTTL = 5 * time.Second

// Member is a live controller.
type Member struct {
	ID   string
	Addr string // gRPC address
}

// Config configures a Cluster.
type Config struct {
	Client *clientv3.Client
	Prefix string // the store's etcd key prefix
	ID     string // this controller's ID (DefaultID when empty)
	Addr   string // this controller's gRPC advertise address
	TTL    time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultID is a controller's ID when none is configured: the host name.
func DefaultID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "controller"
	}
	return h
}

// ValidID checks a controller ID: it names a key in etcd.
func ValidID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/ \t\n") {
		return fmt.Errorf("controller ID %q: use up to 128 characters without '/' or spaces", id)
	}
	return nil
}

// Cluster is this controller's part in the cluster.
type Cluster struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	sess      *concurrency.Session
	members   map[string]Member
	leader    Member // zero: none known
	leading   bool
	leadCtx   context.Context // ends the moment this controller may no longer lead
	leaderKey string
	leaderRev int64
	lostAt    time.Time // when the etcd session was lost; zero while it holds
	sessions  map[string]*ferryv1.NodeSession
	published map[string]*ferryv1.NodeSession // ours, written again on a new lease
	notify    chan struct{}                   // closed at the next change

	// life is the context of the leases' keepalives: from New until Run
	// returns (Join's context only bounds the registration).
	life context.Context
	end  context.CancelFunc
}

func (c *Cluster) key(parts ...string) string {
	return strings.TrimRight(c.cfg.Prefix, "/") + "/" + strings.Join(parts, "/")
}

// New checks cfg; Join registers the controller.
func New(cfg Config) (*Cluster, error) {
	if cfg.Client == nil {
		return nil, errors.New("cluster: Config.Client is required")
	}
	if cfg.ID == "" {
		cfg.ID = DefaultID()
	}
	if err := ValidID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	life, end := context.WithCancel(context.Background())
	return &Cluster{
		cfg: cfg, log: cfg.Logger,
		members: map[string]Member{}, sessions: map[string]*ferryv1.NodeSession{}, published: map[string]*ferryv1.NodeSession{},
		notify: make(chan struct{}),
		life:   life, end: end,
	}, nil
}

// ID is this controller's ID.
func (c *Cluster) ID() string { return c.cfg.ID }

// TTL is the lease's time to live.
func (c *Cluster) TTL() time.Duration { return c.cfg.TTL }

func (c *Cluster) changedLocked() {
	close(c.notify)
	c.notify = make(chan struct{})
}

// Changes returns a channel closed at the next change of the members, the
// leader or the session table.
func (c *Cluster) Changes() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notify
}

// Join registers the controller under a new lease. A live controller
// registered under the same ID is waited for (it may be this controller's
// previous run, whose lease has not expired yet) for two TTLs, then
// refused: two controllers with one ID would take each other's sessions.
func (c *Cluster) Join(ctx context.Context) error {
	sess, err := c.register(ctx, 2*c.cfg.TTL+time.Second)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.sess = sess
	c.mu.Unlock()
	return nil
}

func (c *Cluster) register(ctx context.Context, wait time.Duration) (*concurrency.Session, error) {
	ttl := int64((c.cfg.TTL + time.Second - 1) / time.Second)
	// The grant is bounded by ctx and a TTL: etcd unreachable must not
	// hold Join, nor Run's shutdown, for ever. The keepalive lives as long
	// as the Cluster (not ctx, which may only bound the registration).
	gctx, gcancel := context.WithTimeout(ctx, c.cfg.TTL)
	lease, err := c.cfg.Client.Grant(gctx, ttl)
	gcancel()
	if err != nil {
		return nil, fmt.Errorf("controller %s: open an etcd lease: %w", c.cfg.ID, err)
	}
	sess, err := concurrency.NewSession(c.cfg.Client, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(c.life)) //nolint:contextcheck // the keepalive outlives ctx, which bounds the registration only: it ends when Run returns
	if err != nil {
		return nil, fmt.Errorf("controller %s: open an etcd lease: %w", c.cfg.ID, err)
	}
	val, err := proto.Marshal(&ferryv1.ControllerMember{Id: c.cfg.ID, Address: c.cfg.Addr, StartedAt: timestamppb.New(c.cfg.Now())})
	if err != nil {
		_ = sess.Close()
		return nil, err
	}
	k := c.key("members", c.cfg.ID)
	deadline := time.Now().Add(wait)
	for {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.TTL)
		resp, err := c.cfg.Client.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, string(val), clientv3.WithLease(sess.Lease()))).
			Else(clientv3.OpGet(k)).Commit()
		cancel()
		if err != nil {
			_ = sess.Close()
			return nil, fmt.Errorf("controller %s: register in etcd: %w", c.cfg.ID, err)
		}
		if resp.Succeeded {
			return sess, nil
		}
		other := &ferryv1.ControllerMember{}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
			_ = proto.Unmarshal(kvs[0].Value, other)
		}
		if time.Now().After(deadline) {
			_ = sess.Close()
			return nil, fmt.Errorf("controller ID %q is in use by the running controller at %s (started %s): give each controller its own --controller-id", c.cfg.ID, other.GetAddress(), other.GetStartedAt().AsTime().UTC().Format(time.RFC3339))
		}
		select {
		case <-ctx.Done():
			_ = sess.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Run keeps the controller registered, follows the members, the leader and
// the session table, and campaigns for leadership until ctx ends. While
// this controller leads it runs lead with a context that ends as soon as
// it may no longer lead (its lease is lost or etcd stops answering); lead
// must return when it ends. On a lost lease Run registers again as soon as
// etcd answers.
func (c *Cluster) Run(ctx context.Context, lead func(ctx context.Context)) error {
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return errors.New("cluster: Run before Join")
	}
	defer c.end()
	for {
		c.serve(ctx, sess, lead)
		if ctx.Err() != nil {
			// Revoke: the members, sessions and leadership go at once,
			// not a TTL later.
			sess.Orphan()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_, _ = c.cfg.Client.Revoke(rctx, sess.Lease())
			cancel()
			return nil
		}
		c.mu.Lock()
		if c.lostAt.IsZero() {
			c.lostAt = c.cfg.Now()
		}
		c.sess = nil
		c.changedLocked()
		c.mu.Unlock()
		c.log.Error("lost the etcd lease: not leading, and admin writes are refused until etcd answers again", "controller", c.cfg.ID)
		// Give the lease up (at once if etcd still answers; it expires
		// on its own otherwise) without waiting a TTL on a cut link.
		sess.Orphan()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, _ = c.cfg.Client.Revoke(rctx, sess.Lease())
		cancel()
		for {
			var err error
			sess, err = c.register(ctx, 2*c.cfg.TTL+time.Second)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			c.log.Debug("register again in etcd", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		c.mu.Lock()
		c.sess = sess
		c.lostAt = time.Time{}
		c.changedLocked()
		c.mu.Unlock()
		c.log.Info("registered in etcd again")
	}
}

// serve runs while sess holds.
func (c *Cluster) serve(ctx context.Context, sess *concurrency.Session, lead func(ctx context.Context)) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(4)
	go func() { defer wg.Done(); c.watchMembers(sctx) }()
	go func() { defer wg.Done(); c.watchSessions(sctx) }()
	go func() { defer wg.Done(); c.observe(sctx, sess) }()
	go func() {
		defer wg.Done()
		defer cancel()
		if why := c.checkEtcd(sctx, sess); why != "" {
			c.log.Error("stepping down: "+why, "controller", c.cfg.ID)
		}
	}()
	c.republish(sctx, sess)
	el := concurrency.NewElection(sess, c.key("leader"))
	for sctx.Err() == nil {
		if err := el.Campaign(sctx, c.cfg.ID); err != nil {
			if sctx.Err() == nil {
				c.log.Warn("campaign for leadership", "err", err)
				select {
				case <-sctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		c.mu.Lock()
		c.leading, c.leadCtx, c.leaderKey, c.leaderRev = true, sctx, el.Key(), el.Rev()
		c.leader = Member{ID: c.cfg.ID, Addr: c.cfg.Addr}
		c.changedLocked()
		c.mu.Unlock()
		c.log.Info("leading the controllers", "controller", c.cfg.ID)
		lead(sctx)
		c.mu.Lock()
		c.leading = false
		c.changedLocked()
		c.mu.Unlock()
		if ctx.Err() != nil {
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = el.Resign(rctx)
			rcancel()
		}
		c.log.Info("stopped leading", "controller", c.cfg.ID)
	}
}

// checkEtcd ends (and so the session's work and any leadership) when the
// lease is gone or etcd has not answered for half a TTL: well before the
// lease expires on etcd and another controller could be elected. It says
// why (empty when ctx ended).
func (c *Cluster) checkEtcd(ctx context.Context, sess *concurrency.Session) string {
	every := c.cfg.TTL / 5
	misses := 0
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-sess.Done():
			if ctx.Err() != nil {
				return ""
			}
			return "the etcd lease's keepalive ended"
		case <-t.C:
		}
		tctx, cancel := context.WithTimeout(ctx, every)
		resp, err := c.cfg.Client.TimeToLive(tctx, sess.Lease())
		cancel()
		switch {
		case ctx.Err() != nil:
			return ""
		case err == nil && resp.TTL < 0:
			// -1: gone. (0 is less than a second left, the seconds
			// truncated: with a short TTL that is a keepalive due, not
			// an expiry.)
			return "the etcd lease expired"
		case err != nil:
			misses++
			if misses >= 2 {
				return fmt.Sprintf("etcd did not answer twice in %v (%v)", 2*every, err)
			}
		default:
			misses = 0
		}
	}
}

func (c *Cluster) watchMembers(ctx context.Context) {
	c.watchPrefix(ctx, c.key("members")+"/", func(reset bool, k string, v []byte) {
		if reset {
			c.members = map[string]Member{}
			return
		}
		id := strings.TrimPrefix(k, c.key("members")+"/")
		if v == nil {
			delete(c.members, id)
			return
		}
		m := &ferryv1.ControllerMember{}
		if proto.Unmarshal(v, m) == nil {
			c.members[id] = Member{ID: m.GetId(), Addr: m.GetAddress()}
		}
	})
}

func (c *Cluster) watchSessions(ctx context.Context) {
	c.watchPrefix(ctx, c.key("sessions")+"/", func(reset bool, k string, v []byte) {
		if reset {
			c.sessions = map[string]*ferryv1.NodeSession{}
			return
		}
		node := strings.TrimPrefix(k, c.key("sessions")+"/")
		if v == nil {
			delete(c.sessions, node)
			return
		}
		ns := &ferryv1.NodeSession{}
		if proto.Unmarshal(v, ns) == nil {
			c.sessions[node] = ns
		}
	})
}

// watchPrefix loads every key under p and follows its changes, calling
// apply with c.mu held (reset first on each load; v nil for a delete).
func (c *Cluster) watchPrefix(ctx context.Context, p string, apply func(reset bool, k string, v []byte)) {
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, c.cfg.TTL)
		resp, err := c.cfg.Client.Get(gctx, p, clientv3.WithPrefix())
		cancel()
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		c.mu.Lock()
		apply(true, "", nil)
		for _, kv := range resp.Kvs {
			apply(false, string(kv.Key), kv.Value)
		}
		c.changedLocked()
		c.mu.Unlock()
		for wr := range c.cfg.Client.Watch(clientv3.WithRequireLeader(ctx), p, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			c.mu.Lock()
			for _, ev := range wr.Events {
				var v []byte
				if ev.Type == clientv3.EventTypePut {
					v = ev.Kv.Value
				}
				apply(false, string(ev.Kv.Key), v)
			}
			c.changedLocked()
			c.mu.Unlock()
		}
	}
}

// observe follows who leads.
func (c *Cluster) observe(ctx context.Context, sess *concurrency.Session) {
	el := concurrency.NewElection(sess, c.key("leader"))
	for ctx.Err() == nil {
		for resp := range el.Observe(ctx) {
			id := ""
			if len(resp.Kvs) > 0 {
				id = string(resp.Kvs[0].Value)
			}
			c.mu.Lock()
			c.leader = Member{ID: id}
			c.changedLocked()
			c.mu.Unlock()
		}
		c.mu.Lock()
		if !c.leading {
			c.leader = Member{}
		}
		c.changedLocked()
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Members are the live controllers, sorted by ID.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Others are the live controllers but this one.
func (c *Cluster) Others() []Member {
	var out []Member
	for _, m := range c.Members() {
		if m.ID != c.cfg.ID {
			out = append(out, m)
		}
	}
	return out
}

// Leader is the controller that leads now; ok is false when none is known
// (an election is under way, or this controller is cut off from etcd).
func (c *Cluster) Leader() (Member, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil || c.leader.ID == "" {
		return Member{}, false
	}
	m := c.leader
	if mm, ok := c.members[m.ID]; ok {
		m.Addr = mm.Addr
	}
	return m, m.Addr != ""
}

// Leading says whether this controller leads now.
func (c *Cluster) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leadingLocked()
}

func (c *Cluster) leadingLocked() bool { return c.leading && c.leadCtx.Err() == nil }

// NotLeaderError says which controller leads, for writes only the leader
// makes.
type NotLeaderError struct {
	ID     string
	Leader Member // zero when none is known
}

func (e *NotLeaderError) Error() string {
	if e.Leader.ID == "" {
		return fmt.Sprintf("controller %s does not lead the controllers, and no leader is elected right now; try again in a few seconds", e.ID)
	}
	return fmt.Sprintf("controller %s does not lead the controllers; %s at %s does: use that one", e.ID, e.Leader.ID, e.Leader.Addr)
}

// Fence returns the compare that holds while this controller leads (on
// its election key's revision), for store.Fenced; an error when it does
// not lead.
func (c *Cluster) Fence() ([]clientv3.Cmp, error) {
	c.mu.Lock()
	leading, k, rev := c.leadingLocked(), c.leaderKey, c.leaderRev
	c.mu.Unlock()
	if !leading {
		l, _ := c.Leader()
		return nil, &NotLeaderError{ID: c.cfg.ID, Leader: l}
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", rev)}, nil
}

// CutOffError is the error of a write refused because this controller
// lost its connection to etcd.
type CutOffError struct {
	ID     string
	Since  time.Time
	Others []Member // the controllers last seen alive
}

func (e *CutOffError) Error() string {
	var addrs []string
	for _, m := range e.Others {
		addrs = append(addrs, m.Addr)
	}
	use := "another controller"
	if len(addrs) > 0 {
		use = "another controller: " + strings.Join(addrs, ", ")
	}
	return fmt.Sprintf("controller %s lost its connection to etcd at %s; nothing was changed: use %s", e.ID, e.Since.UTC().Format(time.RFC3339), use)
}

// CutOff returns a CutOffError while this controller has no lease in
// etcd (it lost its connection), nil otherwise.
func (c *Cluster) CutOff() error {
	c.mu.Lock()
	lost := c.lostAt
	c.mu.Unlock()
	if lost.IsZero() {
		return nil
	}
	return &CutOffError{ID: c.cfg.ID, Since: lost, Others: c.Others()}
}

// ageRE matches the durations a node's state reason holds (Go's
// time.Duration format: "0.3s", "21s", "1m30s", "250ms").
var ageRE = regexp.MustCompile(`\b[0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h)([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))*`)

// withoutAges is reason with its durations taken out, for comparing two
// reasons: the heartbeat's age in it changes with every evaluation.
func withoutAges(reason string) string { return ageRE.ReplaceAllString(reason, "_") }

// Session is the session table's record of a node: which controller holds
// its stream, and its state there.
func (c *Cluster) Session(node string) (*ferryv1.NodeSession, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns, ok := c.sessions[node]
	return ns, ok
}

// Publish records that this controller holds node's stream, in state
// (written only when it changed). A reason that differs only in its ages
// ("heartbeat 1.2s old" a second after "heartbeat 0.2s old") is no
// change: the record keeps the reason of its write, and ChangedAt says
// when that was.
func (c *Cluster) Publish(ctx context.Context, node string, state ferryv1.NodeState, reason string) error {
	ns := &ferryv1.NodeSession{NodeId: node, ControllerId: c.cfg.ID, State: state, StateReason: reason, ChangedAt: timestamppb.New(c.cfg.Now())}
	c.mu.Lock()
	if old, ok := c.published[node]; ok && old.GetState() == state && withoutAges(old.GetStateReason()) == withoutAges(reason) {
		c.mu.Unlock()
		return nil
	}
	c.published[node] = ns
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return c.CutOff()
	}
	return c.put(ctx, sess, ns)
}

func (c *Cluster) put(ctx context.Context, sess *concurrency.Session, ns *ferryv1.NodeSession) error {
	v, err := proto.Marshal(ns)
	if err != nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, c.cfg.TTL)
	defer cancel()
	_, err = c.cfg.Client.Put(tctx, c.key("sessions", ns.GetNodeId()), string(v), clientv3.WithLease(sess.Lease()))
	return err
}

// Unpublish removes node's session record if it is still this
// controller's (the node may have moved to another already).
func (c *Cluster) Unpublish(ctx context.Context, node string) error {
	c.mu.Lock()
	delete(c.published, node)
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return nil // the lease, and the records under it, are gone
	}
	k := c.key("sessions", node)
	tctx, cancel := context.WithTimeout(ctx, c.cfg.TTL)
	defer cancel()
	_, err := c.cfg.Client.Txn(tctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", sess.Lease())).Then(clientv3.OpDelete(k)).Commit()
	return err
}

// Published lists the nodes whose session records this controller keeps.
func (c *Cluster) Published() map[string]ferryv1.NodeState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]ferryv1.NodeState, len(c.published))
	for n, ns := range c.published {
		out[n] = ns.GetState()
	}
	return out
}

// republish writes this controller's session records under a new lease.
func (c *Cluster) republish(ctx context.Context, sess *concurrency.Session) {
	c.mu.Lock()
	all := make([]*ferryv1.NodeSession, 0, len(c.published))
	for _, ns := range c.published {
		all = append(all, ns)
	}
	c.mu.Unlock()
	for _, ns := range all {
		if err := c.put(ctx, sess, ns); err != nil {
			c.log.Warn("publish agent session", "node", ns.GetNodeId(), "err", err)
		}
	}
}
