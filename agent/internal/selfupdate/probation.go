package selfupdate

import (
	"fmt"
	"time"

	"github.com/ferrydeploy/ferry/shared/dirlock"
)

// LockFile in the state dir serializes the end of a probation: the new
// agent confirming, the new agent restoring the previous one, and the
// watchdog restoring it (see Watch). Whoever takes it first decides; the
// others find the marker gone or restored and leave it.
const LockFile = "agent-update.lock"

// lockWait bounds the wait for LockFile; its holders only rename a file
// and write the marker (and the watchdog stops a hung agent).
const lockWait = 15 * time.Second

func lock(stateDir string) (*dirlock.Lock, error) {
	l, err := dirlock.AcquireWithin(stateDir, LockFile, lockWait)
	if err != nil {
		return nil, fmt.Errorf("agent update lock: %w", err)
	}
	return l, nil
}

// RestoreRequest says which probation to end with a restore and why.
type RestoreRequest struct {
	// Match picks the marker to act on; nil: any on probation.
	Match func(*Marker) bool
	// Reason is what the rollout records for the node.
	Reason func(*Marker) string
	// Stop, when set, runs under the lock before the restore (the
	// watchdog stops a hung new agent there); an error leaves everything
	// as it was.
	Stop func(*Marker) error
}

// RestoreOnProbation puts the previous binary back if the marker in
// stateDir is still on probation (and matches): the binary's one rename
// and the marker's state Restored with the reason are made under
// LockFile, so the agent and its watchdog never both restore. It returns
// the restored marker, or nil when there was nothing to restore (no
// marker, already confirmed or restored, another job).
func RestoreOnProbation(stateDir string, r RestoreRequest) (*Marker, error) {
	l, err := lock(stateDir)
	if err != nil {
		return nil, err
	}
	defer func() { _ = l.Release() }()
	m, err := Load(stateDir)
	if err != nil || m == nil || m.State != Probation || (r.Match != nil && !r.Match(m)) {
		return nil, err
	}
	if r.Stop != nil {
		if err := r.Stop(m); err != nil {
			return nil, err
		}
	}
	if err := Restore(m.Exe, m.Prev); err != nil {
		return nil, err
	}
	m.State, m.Reason = Restored, r.Reason(m)
	if err := m.Save(stateDir); err != nil {
		return nil, fmt.Errorf("record the restore of ferry-agent %s: %w", m.OldVersion, err)
	}
	return m, nil
}

// Confirm ends the probation of jobID after the controller welcomed the
// new agent and it heartbeated: the marker goes. It reports false when
// the probation had already ended otherwise (restored: this agent is
// being replaced by the previous one).
func Confirm(stateDir, jobID string) (bool, error) {
	l, err := lock(stateDir)
	if err != nil {
		return false, err
	}
	defer func() { _ = l.Release() }()
	m, err := Load(stateDir)
	if err != nil {
		return false, err
	}
	if m == nil || m.JobID != jobID || m.State != Probation {
		return false, nil
	}
	return true, Remove(stateDir)
}
