package controller

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/gossipkey"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// gossipName is the controller's member name; '/' cannot appear in a node
// ID, so it never collides with an agent.
const gossipName = "ferry/controller"

func (c *Controller) startGossip() error {
	if c.cfg.GossipAddr == "" {
		return nil
	}
	host, portStr, err := net.SplitHostPort(c.cfg.GossipAddr)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(portStr)
	cfg := gossip.Config{
		NodeName: gossipName, BindAddr: host, BindPort: port,
		Key: c.gossipKey.Current().Key, Label: gossipLabel(c.ca), Profile: c.cfg.GossipProfile,
		Meta:   gossip.Meta{NodeID: gossipName, Role: gossip.RoleController},
		Logger: c.log.With("component", "gossip"),
		// Gossip about a node counts only from where its stream says it is.
		Admit: (&gossipAdmission{fleet: c.fleet, log: c.log.With("component", "gossip")}).admit,
	}
	if adv := c.cfg.GossipAdvertise; adv != "" {
		h, p, err := net.SplitHostPort(adv)
		if err != nil {
			return err
		}
		cfg.AdvertiseAddr = h
		cfg.AdvertisePort, _ = strconv.Atoi(p)
	}
	m, err := gossip.Start(cfg)
	if err != nil {
		return err
	}
	c.member = m
	c.fleet.SetGossip(m)
	c.reg.MustRegister(&gossipCollector{m: m})
	return nil
}

// gossipSeeds are what a welcome tells an agent to join: the controller
// and a few random live agents, so the cluster does not hinge on one
// member.
func (c *Controller) gossipSeeds() []string {
	if c.member == nil {
		return nil
	}
	seeds := []string{c.member.Addr()}
	var alive []string
	for _, ms := range c.member.Members() {
		if ms.State == gossip.StateAlive && ms.Name != gossipName {
			alive = append(alive, ms.Addr)
		}
	}
	rand.Shuffle(len(alive), func(i, j int) { alive[i], alive[j] = alive[j], alive[i] }) //nolint:gosec // spreads joins over the seeds; nothing depends on it being unpredictable
	return append(seeds, alive[:min(3, len(alive))]...)
}

// rejoin makes the controller join an agent's member when gossip does not
// know it: after a controller restart, the agents are still one cluster
// and the controller finds it again through the first agent that connects.
// addr is the one the agent's stream vouches for (the stream's IP, the
// port its hello named), so a hello cannot make the controller dial an
// arbitrary host.
func (c *Controller) rejoin(nodeID, addr string) {
	if c.member == nil || addr == "" {
		return
	}
	if st, ok := c.member.State(nodeID); ok && st == gossip.StateAlive {
		return
	}
	go func() {
		if _, err := c.member.Join([]string{addr}); err != nil {
			c.log.Debug("gossip join agent", "node", nodeID, "addr", addr, "err", err)
		}
	}()
}

// gossipAdmission is the controller member's Admit: fleet.AdmitGossip,
// with each refusal logged once per member and address rather than at
// every push/pull (a fleet behind NAT would otherwise flood the log).
type gossipAdmission struct {
	fleet *fleet.Registry
	log   *slog.Logger

	mu     sync.Mutex
	logged map[string]bool // member name and address
}

// maxLoggedRefusals bounds what gossipAdmission remembers; past it, it
// starts over (and logs each refusal once more).
const maxLoggedRefusals = 4096

func (a *gossipAdmission) admit(name, addr string) error {
	err := a.fleet.AdmitGossip(name, addr)
	if err == nil {
		return nil
	}
	a.mu.Lock()
	key := name + " " + addr
	first := !a.logged[key]
	if first {
		if a.logged == nil || len(a.logged) >= maxLoggedRefusals {
			a.logged = map[string]bool{}
		}
		a.logged[key] = true
	}
	a.mu.Unlock()
	if first {
		a.log.Warn("gossip about a member ignored", "member", name, "addr", addr, "reason", err.Error())
	}
	return err
}

var (
	gossipHealthDesc  = prometheus.NewDesc("ferry_gossip_health_score", "memberlist's awareness health score of the controller's member (0 is healthy; higher means it is struggling to probe peers).", nil, nil)
	gossipMembersDesc = prometheus.NewDesc("ferry_gossip_members", "Gossip members by state, as the controller's member sees them.", []string{"state"}, nil)
)

type gossipCollector struct{ m *gossip.Member }

func (g *gossipCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- gossipHealthDesc
	ch <- gossipMembersDesc
}

func (g *gossipCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(gossipHealthDesc, prometheus.GaugeValue, float64(g.m.HealthScore()))
	counts := map[string]int{gossip.StateAlive: 0, gossip.StateSuspect: 0, gossip.StateDead: 0, gossip.StateLeft: 0}
	for _, ms := range g.m.Members() {
		counts[ms.State]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(gossipMembersDesc, prometheus.GaugeValue, float64(n), st)
	}
}

// GossipAddr is the controller member's advertised address, "" when off.
func (c *Controller) GossipAddr() string {
	if c.member == nil {
		return ""
	}
	return c.member.Addr()
}

// defaultGossipKeyGrace is how long after a rotation the previous gossip
// key keeps working (Config.GossipKeyGrace): long enough for an agent whose
// stream was down at the rotation to reconnect and catch up without
// dropping out of gossip, and the bound on how long a removed node's key
// works after `ferryctl node remove`.
const defaultGossipKeyGrace = 30 * time.Second

// gossipSwitchDelay is how long after a rotation members start encrypting
// with the new key (part of the grace): the broadcast reaches every
// connected agent well within it, so nobody receives a packet it cannot
// decrypt yet.
func gossipSwitchDelay(grace time.Duration) time.Duration {
	return min(grace/4, 2*time.Second)
}

// gossipKeys hands out and rotates the gossip key (server.GossipKeys).
// Removing a node rotates it, so the removed node's copy stops working
// once the grace has passed.
type gossipKeys struct {
	ring   *gossipkey.Ring
	fleet  *fleet.Registry
	member *gossip.Member // nil when the controller does not gossip
	grace  time.Duration
	now    func() time.Time

	mu sync.Mutex // one rotation at a time
}

func (c *Controller) gossipKeys() *gossipKeys {
	return &gossipKeys{ring: c.gossipKey, fleet: c.fleet, member: c.member, grace: c.cfg.GossipKeyGrace, now: c.cfg.Now}
}

// Current is the key with what is left of its rotation's schedule: an
// agent that missed the rotation switches to it at once.
func (g *gossipKeys) Current() *ferryv1.GossipKey {
	return g.message(g.ring.Current(), g.now())
}

func (g *gossipKeys) message(k gossipkey.Key, now time.Time) *ferryv1.GossipKey {
	var switchIn, retireIn time.Duration
	if !k.RotatedAt.IsZero() {
		switchAt := k.RotatedAt.Add(gossipSwitchDelay(g.grace))
		retireAt := k.RotatedAt.Add(g.grace)
		switchIn = max(switchAt.Sub(now), 0)
		retireIn = max(retireAt.Sub(now)-switchIn, 0)
	}
	return &ferryv1.GossipKey{Key: k.Key, Generation: k.Generation, SwitchIn: durationpb.New(switchIn), RetirePreviousIn: durationpb.New(retireIn)}
}

// Rotate stores a new key and records the rotation, then starts the
// controller's member on it and sends it to every connected agent; the
// others get it in their next welcome.
func (g *gossipKeys) Rotate(record func(*ferryv1.RotateGossipKeyResponse) error) (*ferryv1.RotateGossipKeyResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	resp := &ferryv1.RotateGossipKeyResponse{PreviousKeyRetiresAt: timestamppb.New(now.Add(g.grace))}
	k, err := g.ring.Rotate(now, func(k gossipkey.Key) error {
		resp.Generation = k.Generation
		return record(resp)
	})
	if err != nil {
		return nil, err
	}
	msg := g.message(k, now)
	if g.member != nil {
		if err := g.member.RotateKey(k.Key, msg.GetSwitchIn().AsDuration(), msg.GetRetirePreviousIn().AsDuration()); err != nil {
			return nil, err // only after shutdown
		}
	}
	sent := g.fleet.Broadcast(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_GossipKey{GossipKey: msg}})
	if sent >= 0 && sent <= math.MaxUint32 {
		resp.AgentsSent = uint32(sent)
	}
	return resp, nil
}
