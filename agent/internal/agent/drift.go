package agent

import (
	"context"
	"errors"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	"github.com/ferrydeploy/ferry/agent/internal/install"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// DefaultDriftInterval is how often the agent checks its installed trees
// against their manifests when Config.DriftInterval is 0.
const DefaultDriftInterval = 10 * time.Minute

// statusEvery is how often the heartbeat also rewrites status.json.
const statusEvery = 30 * time.Second

// driftLoop checks the installed trees (cheaply: sizes, modes, times)
// once at start and then every interval, jittered; heartbeats carry the
// last report. A check that meets a running job is tried again a minute
// later.
func (a *Agent) driftLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := a.jobs.inst.CheckDrift(false)
		switch {
		case errors.Is(err, install.ErrBusy):
			t.Reset(min(time.Minute, interval))
			continue
		case err != nil:
			a.log.Warn("drift check failed", "err", err)
		default:
			if n := len(rep.GetPackages()); n > 0 {
				a.log.Warn("installed files differ from what Ferry installed", "packages", n, "first", rep.GetPackages()[0].GetName(), "examples", rep.GetPackages()[0].GetExamples())
			}
			a.drift.Store(rep)
		}
		t.Reset(a.jitter(interval, 0.1))
	}
}

// writeStatus records the daemon's view for ferry-agent doctor, at most
// every statusEvery unless force.
func (a *Agent) writeStatus(connected, force bool) {
	now := a.cfg.Now()
	a.mu.Lock()
	if !force && now.Sub(a.statusAt) < statusEvery {
		a.mu.Unlock()
		return
	}
	a.statusAt = now
	m := a.member
	welcome := a.welcomed
	a.mu.Unlock()
	st := agentstatus.Status{WrittenAt: now, Controller: a.cfg.Controller, Connected: connected, LastWelcome: welcome, ClockSkew: a.id.Skew(now), Gossip: m != nil}
	if m != nil {
		for _, ms := range m.Members() {
			st.GossipMembers++
			if ms.State == gossip.StateAlive {
				st.GossipAlive++
			}
		}
	}
	if err := agentstatus.Write(a.cfg.StateDir, st, a.drift.Load()); err != nil {
		a.log.Warn("could not write the status file ferry-agent doctor reads", "err", err)
	}
}
