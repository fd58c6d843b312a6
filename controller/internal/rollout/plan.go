// Plans: what a rollout would do on each node, asked of the agents without
// changing anything.

package rollout

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// planWait collects the answers to one plan's JOB_KIND_PLAN jobs.
type planWait struct {
	jobs    map[string]string // job ID -> node ID
	reports chan planReport
	digest  string // the package's artifact, which plan jobs may download
}

func planJobID(planID, nodeID string) string { return planID + "/plan/" + nodeID }

type planReport struct {
	nodeID string
	u      *ferryv1.JobUpdate
}

// deliver hands a final plan report to the waiting Plan call. Called with
// e.mu held; never blocks.
func (pw *planWait) deliver(nodeID string, u *ferryv1.JobUpdate) {
	if pw.jobs[u.GetJobId()] != nodeID {
		return // not this node's plan job
	}
	switch u.GetPhase() {
	case ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, ferryv1.JobPhase_JOB_PHASE_FAILED:
	default:
		return
	}
	select {
	case pw.reports <- planReport{nodeID, u}:
	default:
	}
}

// Plan answers a create request without changing anything: it validates it
// as Create does (a conflict is an error here too), computes the nodes and
// waves, sends a JOB_KIND_PLAN job to every reachable node and waits, up to
// Config.PlanTimeout or until ctx ends, for their step plans (the agents'
// JobUpdates arrive through HandleJobUpdate). Nodes that are unreachable,
// fail to plan or do not answer in time get a note saying so. Nothing is
// persisted.
func (e *Engine) Plan(ctx context.Context, req *ferryv1.CreateRolloutRequest) ([]*ferryv1.NodePlan, error) {
	p, err := e.prepare(req)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	now := e.cfg.Clock.Now()
	fleet, err := e.matchLocked(req.GetPackageName(), req.GetTarget())
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	installed := map[string]string{}
	for _, n := range fleet {
		installed[n.GetId()] = installedVersion(n, req.GetPackageName())
	}
	nodes := buildNodes(fleet, int(p.strat.GetCanary()), now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string { return installed[n.GetId()] })
	planID := "plan-" + e.newIDLocked()
	pw := &planWait{jobs: map[string]string{}, reports: make(chan planReport, 2*len(nodes)), digest: p.pkg.GetArtifact().GetDigest()}
	plans := make([]*ferryv1.NodePlan, len(nodes))
	byNode := map[string]*ferryv1.NodePlan{}
	var send []*ferryv1.NodeJob
	for i, n := range nodes {
		plans[i] = &ferryv1.NodePlan{NodeId: n.GetNodeId(), Wave: n.GetWave()}
		byNode[n.GetNodeId()] = plans[i]
		if n.GetOutcome() == ocUnreachable {
			plans[i].Note = "unreachable: " + n.GetMessage() + "; it would not be waited on"
			continue
		}
		pw.jobs[planJobID(planID, n.GetNodeId())] = n.GetNodeId()
		send = append(send, n)
	}
	e.plans[planID] = pw
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.plans, planID)
		e.mu.Unlock()
	}()

	waiting := map[string]bool{}
	for _, n := range send {
		job := &ferryv1.Job{
			Id:        planJobID(planID, n.GetNodeId()),
			RolloutId: planID,
			Kind:      kindPlan,
			Package:   p.pkg,
			Deadline:  durationpb.New(e.cfg.PlanTimeout),
		}
		if err := e.cfg.Dispatcher.Dispatch(n.GetNodeId(), job); err != nil {
			byNode[n.GetNodeId()].Note = fmt.Sprintf("unreachable: %v; it would not be waited on", err)
			continue
		}
		waiting[n.GetNodeId()] = true
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.PlanTimeout)
	defer cancel()
	for len(waiting) > 0 {
		select {
		case rep := <-pw.reports:
			if !waiting[rep.nodeID] {
				continue
			}
			delete(waiting, rep.nodeID)
			np := byNode[rep.nodeID]
			np.Steps = cloneSteps(rep.u.GetSteps())
			np.Note = planNote(rep.u, req.GetPackageName(), req.GetPackageVersion(), installed[rep.nodeID])
			np.Failed = rep.u.GetPhase() == ferryv1.JobPhase_JOB_PHASE_FAILED
		case <-ctx.Done():
			for id := range waiting {
				byNode[id].Note = fmt.Sprintf("no plan from the agent within %s", e.cfg.PlanTimeout.Round(time.Millisecond))
				byNode[id].Failed = true
				if err := e.cfg.Dispatcher.Cancel(id, planJobID(planID, id)); err != nil {
					e.log.Debug("cancel plan job", "node", id, "err", err)
				}
			}
			waiting = nil
		}
	}
	return plans, nil
}

func planNote(u *ferryv1.JobUpdate, name, version, have string) string {
	switch u.GetPhase() {
	case ferryv1.JobPhase_JOB_PHASE_UNCHANGED:
		if have == version {
			return fmt.Sprintf("already has %s@%s; nothing would change", name, version)
		}
		return "nothing would change"
	case ferryv1.JobPhase_JOB_PHASE_FAILED:
		msg := u.GetMessage()
		if u.GetFailedStep() != "" {
			msg = u.GetFailedStep() + ": " + msg
		}
		return "plan failed at " + msg
	}
	changes := 0
	for _, s := range u.GetSteps() {
		if s.GetChanged() {
			changes++
		}
	}
	if changes == 0 {
		return "nothing would change"
	}
	from := have
	if from == "" {
		from = "not installed"
	}
	return fmt.Sprintf("%s: %s -> %s; %d of %d steps would change", name, from, version, changes, len(u.GetSteps()))
}
