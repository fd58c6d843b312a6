package agent

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/install"
	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/version"
)

// RestartError ends Run when the agent must start again as another
// binary (a new one swapped in, or the previous one restored): the
// caller executes Exe in its place, or exits with selfupdate.ExitRestart
// under systemd.
type RestartError struct {
	Exe  string
	Args []string // nil: this process's own
}

func (e *RestartError) Error() string { return "the agent restarts as " + e.Exe }

// updateState is the agent's side of a self-update (package selfupdate):
// the marker of the swap this process is on probation for, and the
// restart it asked for.
type updateState struct {
	mu        sync.Mutex
	probation *selfupdate.Marker // nil: not on probation
	confirmed chan struct{}      // closed when the probation ends either way

	restartOnce sync.Once
	restart     chan struct{} // closed when Run must end with a RestartError
	restartExe  string        // set before restart is closed
	restartArgs []string
}

func newUpdateState() *updateState {
	return &updateState{confirmed: make(chan struct{}), restart: make(chan struct{})}
}

func (a *Agent) restarting() bool {
	select {
	case <-a.upd.restart:
		return true
	default:
		return false
	}
}

func (a *Agent) requestRestart(exe string, args []string) {
	a.upd.restartOnce.Do(func() {
		a.upd.restartExe, a.upd.restartArgs = exe, args
		close(a.upd.restart)
	})
}

func (a *Agent) restartError() error {
	return &RestartError{Exe: a.upd.restartExe, Args: a.upd.restartArgs}
}

// onProbation reports whether jobID is the update this agent is on
// probation for: its result is held back until the controller welcomes
// the new agent.
func (a *Agent) onProbation(jobID string) bool {
	a.upd.mu.Lock()
	defer a.upd.mu.Unlock()
	return a.upd.probation != nil && a.upd.probation.JobID == jobID
}

// settleUpdate acts on the marker a swap left: this process is the new
// agent on probation, or the previous one started again, which records
// the job as failed.
func (a *Agent) settleUpdate() error {
	m, err := selfupdate.Load(a.cfg.StateDir)
	if err != nil {
		a.log.Error("ignoring an unreadable agent update marker", "err", err)
		return selfupdate.Remove(a.cfg.StateDir)
	}
	if m == nil {
		return nil
	}
	if m.State == selfupdate.Probation && m.NewVersion == version.Version {
		a.upd.probation = m
		if !a.cfg.Now().Before(m.Deadline) {
			// Started again after the deadline (systemd restarting a new
			// agent that died): restore before trying to connect.
			a.restorePrevious()
			return nil
		}
		a.log.Info("new agent on probation until the controller welcomes it", "job", m.JobID, "previous", m.OldVersion, "deadline", m.Deadline)
		return nil
	}
	reason := m.Reason
	if reason == "" {
		reason = fmt.Sprintf("ferry-agent %s was not welcomed by the controller; ferry-agent %s runs again", m.NewVersion, version.Version)
	}
	if _, err := a.jobs.inst.FailAgentUpdate(m.JobID, reason); err != nil {
		a.log.Error("could not record the failed agent update", "job", m.JobID, "err", err)
	} else {
		a.log.Warn("agent update failed; the previous agent runs again", "job", m.JobID, "reason", reason)
	}
	return selfupdate.Remove(a.cfg.StateDir)
}

// watchProbation restores the previous agent when the controller has not
// welcomed this one by the marker's deadline.
func (a *Agent) watchProbation(done <-chan struct{}) {
	a.upd.mu.Lock()
	m := a.upd.probation
	a.upd.mu.Unlock()
	if m == nil {
		return
	}
	t := time.NewTimer(time.Until(m.Deadline))
	defer t.Stop()
	select {
	case <-t.C:
		a.restorePrevious()
	case <-a.upd.confirmed:
	case <-done:
	}
}

// restorePrevious puts the previous binary back and asks for a restart;
// the restored agent reports the job failed.
func (a *Agent) restorePrevious() {
	a.upd.mu.Lock()
	defer a.upd.mu.Unlock()
	m := a.upd.probation
	if m == nil {
		return // welcomed in the meantime
	}
	start := time.Now()
	restored, err := selfupdate.RestoreOnProbation(a.cfg.StateDir, selfupdate.RestoreRequest{
		Match: func(on *selfupdate.Marker) bool { return on.JobID == m.JobID },
		Reason: func(on *selfupdate.Marker) string {
			return fmt.Sprintf("new agent did not reconnect within %s; restored ferry-agent %s", selfupdate.Seconds(on.Timeout), on.OldVersion)
		},
	})
	if err != nil {
		a.log.Error("could not restore the previous agent; this one keeps running", "err", err)
		return
	}
	a.upd.probation = nil
	close(a.upd.confirmed)
	if restored == nil {
		a.log.Warn("the update's probation had already ended (the watchdog restored the previous agent)", "job", m.JobID)
		return
	}
	a.log.Warn("the controller did not welcome the new agent in time; previous agent restored, restarting it", "job", m.JobID,
		"previous", m.OldVersion, "restore_took", time.Since(start))
	a.requestRestart(restored.Exe, restored.Args)
}

// confirmUpdate ends a probation once the new agent was welcomed and
// sent its first heartbeat: the marker goes and the job's result
// (succeeded) is reported.
func (a *Agent) confirmUpdate() {
	a.upd.mu.Lock()
	m := a.upd.probation
	if m == nil {
		a.upd.mu.Unlock()
		return
	}
	ok, err := selfupdate.Confirm(a.cfg.StateDir, m.JobID)
	if err != nil {
		a.upd.mu.Unlock()
		a.log.Error("could not confirm the agent update; trying again at the next connection", "job", m.JobID, "err", err)
		return
	}
	a.upd.probation = nil
	close(a.upd.confirmed)
	a.upd.mu.Unlock()
	if !ok {
		a.log.Error("the update's probation had already ended: the watchdog restored the previous agent", "job", m.JobID)
		return
	}
	a.log.Info("the controller welcomed the new agent; update confirmed", "job", m.JobID, "previous", m.OldVersion,
		"since_swap", time.Since(m.Deadline.Add(-m.Timeout)))
	if res, ok := a.jobs.inst.JobResult(m.JobID); ok {
		a.jobs.report(res)
	}
}

// swapAgent swaps a staged binary in after its job succeeded and asks
// for the restart. It reports false, having removed the staged binary,
// when the swap could not be made; the running agent is intact then.
func (a *Agent) swapAgent(ctx context.Context, job *ferryv1.Job, up *install.AgentUpdate, logf install.LogFunc) bool {
	m := &selfupdate.Marker{JobID: job.GetId(), RolloutID: job.GetRolloutId(), Exe: up.Exe, Prev: selfupdate.PrevPath(up.Exe),
		OldVersion: up.OldVersion, NewVersion: up.NewVersion, Timeout: up.Timeout, Deadline: time.Now().Add(up.Timeout), State: selfupdate.Probation,
		Args: os.Args[1:]}
	start := time.Now()
	err := m.Save(a.cfg.StateDir)
	if err == nil {
		if err = selfupdate.Swap(up.Staged, up.Exe, m.Prev); err != nil {
			_ = selfupdate.Remove(a.cfg.StateDir)
		}
	}
	if err != nil {
		_ = os.Remove(up.Staged)
		a.log.Error("agent update: swap failed", "job", job.GetId(), "err", err)
		note(logf, "agent_update: %v", err)
		return false
	}
	took := time.Since(start)
	// The watchdog restores the previous agent if the new one dies or
	// hangs before its own timer can; without one, no swap.
	spec := selfupdate.WatchSpec{Binary: m.Prev, StateDir: a.cfg.StateDir, JobID: m.JobID, Systemd: selfupdate.UnderSystemd()}
	if spec.Systemd {
		spec.Unit = selfupdate.Unit()
	} else {
		spec.PID = os.Getpid()
	}
	if err := a.cfg.StartWatchdog(ctx, spec); err != nil {
		if rerr := selfupdate.Restore(up.Exe, m.Prev); rerr != nil {
			a.log.Error("agent update: no watchdog, and the previous binary could not be put back", "job", job.GetId(), "err", rerr)
		}
		_ = selfupdate.Remove(a.cfg.StateDir)
		a.log.Error("agent update: the watchdog did not start; the swap was undone", "job", job.GetId(), "err", err)
		note(logf, "agent_update: the update watchdog did not start (%v); ferry-agent %s was put back", err, up.OldVersion)
		return false
	}
	note(logf, "ferry-agent %s swapped in at %s in %s (ferry-agent %s kept as %s); restarting; it must reach the controller within %s",
		up.NewVersion, up.Exe, took.Round(time.Microsecond), up.OldVersion, m.Prev, selfupdate.Seconds(up.Timeout))
	a.logs.Finish(job.GetId())
	a.sendLogs()
	a.log.Info("agent update: new binary swapped in; restarting", "job", job.GetId(), "version", up.NewVersion, "swap_took", took)
	a.requestRestart(up.Exe, nil)
	return true
}

// failAgentUpdate records an update job as failed in place of its
// success.
func (a *Agent) failAgentUpdate(jobID string, final *ferryv1.JobUpdate, reason string) *ferryv1.JobUpdate {
	u, err := a.jobs.inst.FailAgentUpdate(jobID, reason)
	if err != nil {
		a.log.Error("could not record the failed agent update", "job", jobID, "err", err)
		final.Phase, final.Message = ferryv1.JobPhase_JOB_PHASE_FAILED, reason
		return final
	}
	return u
}
