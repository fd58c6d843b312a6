// Effects and commit: how a transition reaches the store and then the
// dispatcher, in commit order, and what happens when either fails.

package rollout

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// effects are the calls to the dispatcher that transitions produce, in the
// order they were committed. They are queued under e.mu and performed
// without it, by one goroutine at a time (see drain), so a job is always
// sent before a later transition's cancel of it.
type effects struct {
	ops []op
}

// op is one call: a send when job is set, else a cancel of jobID.
type op struct {
	rolloutID string
	nodeID    string
	job       *ferryv1.Job
	outcome   ferryv1.NodeOutcome // for a send: the outcome set when it was sent
	jobID     string
}

func (fx *effects) cancel(nodeID, jobID string) {
	fx.ops = append(fx.ops, op{nodeID: nodeID, jobID: jobID})
}

// sentNode remembers a node record as it was before it was given a job, to
// take the job back if the rollout cannot be saved.
type sentNode struct {
	n      *ferryv1.NodeJob
	before *ferryv1.NodeJob
}

// sendOp is the effect that sends a node a job of the rollout; outcome is
// the node's outcome when the job is handed over.
func sendOp(ru *run, nodeID, jobID string, kind ferryv1.JobKind, pkg *ferryv1.Package, outcome ferryv1.NodeOutcome) op {
	return op{
		rolloutID: ru.r.GetId(),
		nodeID:    nodeID,
		outcome:   outcome,
		job: &ferryv1.Job{
			Id:        jobID,
			RolloutId: ru.r.GetId(),
			Kind:      kind,
			Package:   pkg,
			Deadline:  durationpb.New(ru.st.progressDeadline),
		},
	}
}

// commit persists the rollout if it changed and sends the queued events to
// watchers. If the store fails, jobs that were about to be sent are taken
// back (they are retried later), because a job is only ever sent once its ID
// is on disk. Called with e.mu held.
func (e *Engine) commit(ru *run, now time.Time, fx *effects) error {
	if !ru.dirty {
		return nil
	}
	ru.r.UpdatedAt = timestamppb.New(now)
	snap := proto.Clone(ru.r).(*ferryv1.Rollout)
	err := e.cfg.Store.SaveRollout(snap, nil)
	if err != nil {
		err = fmt.Errorf("rollout %s: save: %w; it is retried at the next tick", ru.r.GetId(), err)
		e.log.Error("save rollout", "rollout", ru.r.GetId(), "err", err)
		taken := map[string]bool{}
		for _, s := range ru.sent {
			taken[s.n.GetJobId()] = true
			proto.Reset(s.n)
			proto.Merge(s.n, s.before)
			ru.event(now, s.n.GetNodeId(), "job not sent: could not save the rollout: %v", err)
		}
		kept := fx.ops[:0]
		for _, o := range fx.ops {
			if o.job == nil || o.rolloutID != ru.r.GetId() || !taken[o.job.GetId()] {
				kept = append(kept, o)
			}
		}
		fx.ops = kept
		snap = proto.Clone(ru.r).(*ferryv1.Rollout)
	} else {
		ru.dirty = false
	}
	publish(ru, snap)
	return err
}

// publish sends the events queued since the last commit to the watchers,
// each with snap (the rollout as saved), and closes them when the rollout
// has ended. Called with e.mu held.
func publish(ru *run, snap *ferryv1.Rollout) {
	ru.sent = nil
	for _, ev := range ru.events {
		ev.Rollout = snap
		for w := range ru.watchers {
			w.send(ev)
		}
	}
	ru.events = nil
	if ru.ended() {
		for w := range ru.watchers {
			w.close()
		}
		ru.watchers = nil
	}
}

// checkpoint is a run as it was before an admin action: what
// commitAction goes back to when the action cannot be saved. At the start
// of an action the run has no uncommitted events or sends: every
// transition is committed before e.mu is released.
type checkpoint struct {
	r                         *ferryv1.Rollout
	promoted, recancel, dirty bool
	healthySince              map[string]time.Time
	ops                       []op
}

func checkpointOf(ru *run, fx *effects) checkpoint {
	return checkpoint{
		r:        proto.Clone(ru.r).(*ferryv1.Rollout),
		promoted: ru.promoted, recancel: ru.recancel, dirty: ru.dirty,
		healthySince: maps.Clone(ru.healthySince),
		ops:          slices.Clone(fx.ops),
	}
}

func (cp checkpoint) restore(ru *run, fx *effects) {
	ru.r = cp.r
	ru.promoted, ru.recancel, ru.dirty = cp.promoted, cp.recancel, cp.dirty
	ru.healthySince = cp.healthySince
	ru.events, ru.sent = nil, nil
	fx.ops = cp.ops
}

// commitAction commits an admin action's transition and its audit entry
// ev (nil without an Auditor) in one transaction. If that fails, the run
// goes back to before, the action's events never reach the watchers and
// its jobs and cancels are not sent: the action changed nothing. An action
// that left the rollout as it was only writes ev, and fails if ev cannot
// be written. Called with e.mu held.
func (e *Engine) commitAction(ru *run, now time.Time, fx *effects, ev *ferryv1.AuditEvent, before checkpoint) error {
	id := ru.r.GetId()
	if !ru.dirty {
		if ev == nil {
			return nil
		}
		if err := e.cfg.Auditor.AppendAudit(ev); err != nil {
			return fmt.Errorf("rollout %s: %w", id, err)
		}
		return nil
	}
	ru.r.UpdatedAt = timestamppb.New(now)
	snap := proto.Clone(ru.r).(*ferryv1.Rollout)
	if err := e.cfg.Store.SaveRollout(snap, ev); err != nil {
		before.restore(ru, fx)
		if ev == nil { // the store's audit error says as much itself
			err = fmt.Errorf("save: %w; nothing was changed", err)
		}
		err = fmt.Errorf("rollout %s: %w", id, err)
		e.log.Error("save rollout", "rollout", id, "err", err)
		return err
	}
	ru.dirty = false
	publish(ru, snap)
	return nil
}

// drain performs the queued effects. Only one goroutine drains at a time, so
// calls reach the dispatcher in commit order; a caller that finds another
// draining leaves its effects to it (which also makes a dispatcher that
// calls back into the engine safe). Called without e.mu.
func (e *Engine) drain() {
	for {
		if !e.draining.TryLock() {
			return
		}
		for {
			e.mu.Lock()
			ops := e.queue.ops
			e.queue.ops = nil
			e.mu.Unlock()
			if len(ops) == 0 {
				break
			}
			e.perform(ops)
		}
		e.draining.Unlock()
		// Effects queued by a caller that found us draining just before we
		// stopped would otherwise wait for the next drain.
		e.mu.Lock()
		more := len(e.queue.ops) > 0
		e.mu.Unlock()
		if !more {
			return
		}
	}
}

// perform makes the calls. A job the dispatcher could not deliver marks its
// node unreachable (it was never sent, so it is not a failure) and lets the
// window move on, which queues more effects.
func (e *Engine) perform(ops []op) {
	type undelivered struct {
		op
		err error
	}
	var failed []undelivered
	for _, o := range ops {
		if o.job == nil {
			if err := e.cfg.Dispatcher.Cancel(o.nodeID, o.jobID); err != nil {
				e.log.Warn("cancel job", "node", o.nodeID, "job", o.jobID, "err", err)
			}
			continue
		}
		if err := e.cfg.Dispatcher.Dispatch(o.nodeID, o.job); err != nil {
			failed = append(failed, undelivered{o, err})
			continue
		}
		e.log.Info("job sent", "rollout", o.rolloutID, "node", o.nodeID, "job", o.job.GetId(), "kind", o.job.GetKind().String())
	}
	if len(failed) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Clock.Now()
	fx := &e.queue
	var touched []*run
	for _, f := range failed {
		ru := e.runs[f.rolloutID]
		if ru == nil {
			continue
		}
		n := ru.node(f.nodeID)
		if n == nil || n.GetJobId() != f.job.GetId() || n.GetOutcome() != f.outcome || n.GetFinishedAt() != nil {
			continue // the agent answered after all
		}
		if !slices.Contains(touched, ru) {
			touched = append(touched, ru)
		}
		e.log.Warn("job not delivered", "rollout", f.rolloutID, "node", f.nodeID, "err", f.err)
		if f.job.GetKind() == kindRollback && ru.r.GetJobKind() == kindInstall {
			notRolledBack(ru, n, now, f.err.Error())
			continue
		}
		n.JobId = "" // never delivered: not a failure
		e.finish(ru, n, ocUnreachable, now, fx, fmt.Sprintf("not connected when its turn came: %v; no job sent", f.err))
	}
	for _, ru := range touched {
		e.settle(ru, now, fx)
		_ = e.commit(ru, now, fx) // logged; retried at the next tick
	}
}
