package agent

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/ferrydeploy/ferry/shared/gossip"
	"github.com/ferrydeploy/ferry/shared/version"
)

// GossipConfig configures the agent's gossip member.
type GossipConfig struct {
	Addr          string // host:port to bind; "" disables gossip
	AdvertiseAddr string // host:port peers dial (default: the bound address)
	Profile       string // gossip.ProfileLAN (default), ProfileLocal, ProfileWAN
}

// startGossip starts the member before the first connect, so every hello
// can tell the controller where it listens.
func (a *Agent) startGossip() {
	if a.cfg.Gossip.Addr == "" {
		return
	}
	host, portStr, err := net.SplitHostPort(a.cfg.Gossip.Addr)
	if err != nil {
		a.log.Error("gossip disabled: bad --gossip-listen", "addr", a.cfg.Gossip.Addr, "err", err)
		return
	}
	port, _ := strconv.Atoi(portStr)
	cfg := gossip.Config{
		NodeName: a.id.Info.NodeID, BindAddr: host, BindPort: port,
		Key: a.id.Info.GossipKey, Label: a.id.Info.GossipLabel, Profile: a.cfg.Gossip.Profile,
		Meta:   gossip.Meta{NodeID: a.id.Info.NodeID, Role: gossip.RoleAgent, Group: a.id.Info.Group, AgentVersion: version.Version},
		Logger: a.log.With("component", "gossip"),
	}
	if adv := a.cfg.Gossip.AdvertiseAddr; adv != "" {
		h, p, err := net.SplitHostPort(adv)
		if err == nil {
			cfg.AdvertiseAddr = h
			cfg.AdvertisePort, _ = strconv.Atoi(p)
		}
	}
	m, err := gossip.Start(cfg)
	if err != nil {
		a.log.Error("gossip disabled: cannot start member", "err", err)
		return
	}
	a.mu.Lock()
	a.member = m
	a.mu.Unlock()
	a.log.Info("gossip member started", "addr", m.Addr())
}

// joinGossip joins the seeds from a welcome when the member has no live
// peers (first connect, or the cluster lost us): this is how it heals after
// a controller restart.
func (a *Agent) joinGossip(ctx context.Context, seeds []string) {
	a.mu.Lock()
	m := a.member
	a.mu.Unlock()
	if m == nil {
		return
	}
	alive := 0
	for _, ms := range m.Members() {
		if ms.State == gossip.StateAlive {
			alive++
		}
	}
	if alive > 1 || len(seeds) == 0 {
		return
	}
	go func() {
		for attempt := 0; attempt < 10; attempt++ {
			n, err := m.Join(seeds)
			if err == nil && n > 0 {
				a.log.Info("joined gossip cluster", "contacted", n)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(a.backoff(attempt)):
			}
		}
		a.log.Warn("could not join the gossip cluster; will retry at the next connect", "seeds", seeds)
	}()
}

// gossipAddr is the member's advertised address, "" when gossip is off.
func (a *Agent) gossipAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.member == nil {
		return ""
	}
	return a.member.Addr()
}

// leaveGossip announces a graceful departure, then stops the member.
func (a *Agent) leaveGossip() {
	a.mu.Lock()
	m := a.member
	a.member = nil
	a.mu.Unlock()
	if m == nil {
		return
	}
	if err := m.Leave(2 * time.Second); err != nil {
		a.log.Warn("gossip leave", "err", err)
	}
	_ = m.Shutdown()
}
