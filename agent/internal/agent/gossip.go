package agent

import (
	"context"
	"net"
	"strconv"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
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
	key, _ := a.id.GossipKey()
	cfg := gossip.Config{
		NodeName: a.id.Info.NodeID, BindAddr: host, BindPort: port,
		Key: key, Label: a.id.Info.GossipLabel, Profile: a.cfg.Gossip.Profile,
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

// welcomeGossip applies the welcome's gossip key, then joins its seeds.
func (a *Agent) welcomeGossip(ctx context.Context, w *ferryv1.Welcome) {
	changed := a.applyGossipKey(w.GetGossipKey())
	a.joinGossip(ctx, w.GetGossipSeeds(), changed)
}

// applyGossipKey stores a gossip key the controller sent and rotates the
// member to it on the controller's schedule: decrypt with it now, encrypt
// with it after switch_in, drop the keys it replaces retire_previous_in
// later. It reports whether this node's key changed.
func (a *Agent) applyGossipKey(k *ferryv1.GossipKey) bool {
	key := k.GetKey()
	if len(key) == 0 {
		return false // a controller from before rotation
	}
	if len(key) != gossip.KeySize {
		a.log.Error("controller sent a gossip key of the wrong size; keeping the current one", "bytes", len(key), "want", gossip.KeySize)
		return false
	}
	changed, err := a.id.SetGossipKey(key, k.GetGeneration())
	if err != nil {
		// Used anyway: a restart starts on the old key and the next
		// welcome brings the new one.
		a.log.Error("cannot store the new gossip key in the state dir", "generation", k.GetGeneration(), "err", err)
		changed = true
	}
	switchIn, retireIn := k.GetSwitchIn().AsDuration(), k.GetRetirePreviousIn().AsDuration()
	if changed {
		a.log.Info("gossip key rotated", "generation", k.GetGeneration(), "switch_in", switchIn, "previous_key_retired_in", switchIn+retireIn)
	}
	a.mu.Lock()
	m := a.member
	a.mu.Unlock()
	if m != nil {
		if err := m.RotateKey(key, switchIn, retireIn); err != nil {
			a.log.Warn("gossip key rotation", "err", err)
		}
	}
	return changed
}

// joinGossip joins the seeds from a welcome when the member has no live
// peers (first connect, or the cluster lost us): this is how it heals after
// a controller restart. force joins anyway: after a rotation this node
// missed, its peers may have dropped it.
func (a *Agent) joinGossip(ctx context.Context, seeds []string, force bool) {
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
	if (alive > 1 && !force) || len(seeds) == 0 {
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
