package controller

import (
	"math/rand/v2"
	"net"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

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
		Key: c.gossipKey, Label: gossipLabel(c.ca), Profile: c.cfg.GossipProfile,
		Meta:   gossip.Meta{NodeID: gossipName, Role: gossip.RoleController},
		Logger: c.log.With("component", "gossip"),
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
