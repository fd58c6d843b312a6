package agent

import (
	"context"
	"errors"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	"github.com/ferrydeploy/ferry/agent/internal/install"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// DefaultDriftInterval is how often the agent checks its installed trees
// against their manifests when Config.DriftInterval is 0.
const DefaultDriftInterval = 10 * time.Minute

// statusEvery is how often the heartbeat also rewrites status.json.
const statusEvery = 30 * time.Second

// driftLoop checks the installed trees (cheaply: sizes, modes, times)
// once at start, after every job, and every interval, jittered;
// heartbeats carry the last report. Before each check it records the
// hashes of trees installed since (RecordHashes), for full checks later. A
// round that meets a running job is tried again a minute later.
func (a *Agent) driftLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.driftKick:
		}
		err := a.jobs.inst.RecordHashes()
		var rep *ferryv1.DriftReport
		if err == nil || !errors.Is(err, install.ErrBusy) {
			if err != nil {
				a.log.Warn("could not record the hashes of installed files", "err", err)
			}
			rep, err = a.jobs.inst.CheckDrift(false)
		}
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

// kickDrift asks the drift loop for a round now (after a job).
func (a *Agent) kickDrift() {
	select {
	case a.driftKick <- struct{}{}:
	default:
	}
}

// writeStatus records the daemon's view for ferry-agent doctor: when it
// changed (or force), and otherwise every statusEvery so its age shows the
// daemon is alive.
func (a *Agent) writeStatus(connected, force bool) {
	now := a.cfg.Now()
	a.mu.Lock()
	m := a.member
	st := agentstatus.Status{Controller: a.endpoint.String(), Controllers: a.cfg.Controllers, Connected: connected, LastWelcome: a.welcomed, Gossip: m != nil}
	a.mu.Unlock()
	st.ClockSkew = a.id.Skew(now)
	if m != nil {
		for _, ms := range m.Members() {
			st.GossipMembers++
			if ms.State == gossip.StateAlive {
				st.GossipAlive++
			}
		}
	}
	drift := a.drift.Load()
	key := statusKey{st.Controller, st.Connected, st.LastWelcome, st.ClockSkew, st.Gossip, st.GossipAlive, st.GossipMembers, drift}
	a.mu.Lock()
	if !force && key == a.lastStatus && now.Sub(a.statusAt) < statusEvery {
		a.mu.Unlock()
		return
	}
	a.statusAt, a.lastStatus = now, key
	a.mu.Unlock()
	st.WrittenAt = now
	if err := agentstatus.Write(a.cfg.StateDir, st, drift); err != nil {
		a.log.Warn("could not write the status file ferry-agent doctor reads", "err", err)
	}
}

// statusKey is what status.json says, to tell when it changed.
type statusKey struct {
	controller     string
	connected      bool
	welcome        time.Time
	skew           time.Duration
	gossip         bool
	alive, members int
	drift          *ferryv1.DriftReport
}
