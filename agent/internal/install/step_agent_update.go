package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/version"
)

// defaultReconnectTimeout is the agent_update step's default deadline for
// the new agent to reach the controller.
const defaultReconnectTimeout = 60 * time.Second

// agentUpdateKind stages the package's artifact as the agent's next
// binary: a copy beside the running executable whose --version names a
// ferry-agent of another version. The swap and the restart come after
// the job is recorded (the agent takes the staged binary with
// TakeAgentUpdate); see package selfupdate. The step ignores the install
// root: it replaces the agent's own executable.
type agentUpdateKind struct{ i *Installer }

// UsesArtifact: the artifact is the new binary.
func (agentUpdateKind) UsesArtifact() {}

func (agentUpdateKind) Describe(*ferryv1.Step) string { return "agent_update ferry-agent" }

func (k agentUpdateKind) Validate(r validateRequest) error {
	switch {
	case k.i.exe == "":
		return errors.New("this agent does not know its own executable, so it cannot replace it; start it by its path")
	case r.job.Package.GetArtifact().GetDigest() == "":
		return errors.New("agent_update needs the package's artifact (the ferry-agent binary)")
	case r.job.Package.GetSteps()[len(r.job.Package.GetSteps())-1] != r.step:
		return errors.New("agent_update must be the package's last step: the agent restarts after it")
	case r.step.GetAgentUpdate().GetReconnectTimeout().AsDuration() < 0:
		return errors.New("agent_update: negative reconnect_timeout")
	}
	return nil
}

func (k agentUpdateKind) Plan(_ context.Context, _ stepRequest) (stepResponse, error) {
	return stepResponse{changed: true, detail: fmt.Sprintf("would replace ferry-agent %s at %s with the package's binary and restart", version.Version, k.i.exe)}, nil
}

func (k agentUpdateKind) Apply(ctx context.Context, r stepRequest) (stepResponse, error) {
	i, s := k.i, r.step.GetAgentUpdate()
	staged, newVersion, err := selfupdate.Stage(ctx, r.job.artifact, i.exe)
	if err != nil {
		return stepResponse{}, err
	}
	if want := s.GetExpectVersion(); want != "" && !strings.Contains(newVersion, want) {
		_ = os.Remove(staged)
		return stepResponse{}, fmt.Errorf("the new binary is ferry-agent %s, not %s as the step expects; it was not installed", newVersion, want)
	}
	if newVersion == version.Version {
		_ = os.Remove(staged)
		return stepResponse{detail: "ferry-agent " + newVersion + " is running"}, nil
	}
	timeout := s.GetReconnectTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultReconnectTimeout
	}
	i.mu.Lock()
	i.staged[r.job.jobID] = &AgentUpdate{Staged: staged, Exe: i.exe, OldVersion: version.Version, NewVersion: newVersion, Timeout: timeout}
	i.mu.Unlock()
	return stepResponse{changed: true, detail: fmt.Sprintf("ferry-agent %s staged (--version ran); it replaces %s after the job and must reach the controller within %s", newVersion, version.Version, timeout)}, nil
}

// AgentUpdate is a new agent binary a job staged.
type AgentUpdate struct {
	Staged, Exe            string
	OldVersion, NewVersion string
	Timeout                time.Duration
}

// TakeAgentUpdate returns the binary job staged, if any; the agent swaps
// it in once the job succeeded. A staged binary of a job that did not
// succeed is deleted.
func (i *Installer) TakeAgentUpdate(jobID string, succeeded bool) (*AgentUpdate, bool) {
	i.mu.Lock()
	u, ok := i.staged[jobID]
	delete(i.staged, jobID)
	i.mu.Unlock()
	if ok && !succeeded {
		_ = os.Remove(u.Staged)
		return nil, false
	}
	return u, ok
}

// FailAgentUpdate replaces the recorded result of an agent update job
// with a failure (the new agent was not welcomed and the previous one
// is back) and drops the package version the job recorded, so the node
// reports the version it runs.
func (i *Installer) FailAgentUpdate(jobID, reason string) (*ferryv1.JobUpdate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	u, ok := i.results[jobID]
	if !ok {
		return nil, fmt.Errorf("agent update job %s has no recorded result", jobID)
	}
	failed := &ferryv1.JobUpdate{JobId: u.GetJobId(), RolloutId: u.GetRolloutId(), Phase: ferryv1.JobPhase_JOB_PHASE_FAILED,
		Message: reason, FailedStep: "agent_update ferry-agent", At: timestamppb.New(i.now()), Steps: u.GetSteps()}
	for name, recs := range i.st.Packages {
		if n := len(recs); n > 0 && recs[n-1].JobID == jobID {
			if n == 1 {
				delete(i.st.Packages, name)
			} else {
				i.st.Packages[name] = recs[:n-1]
			}
		}
	}
	i.results[jobID] = failed
	for k := range i.st.Results {
		if i.st.Results[k].JobID == jobID {
			i.st.Results = append(i.st.Results[:k], i.st.Results[k+1:]...)
			break
		}
	}
	i.addResult(failed)
	if err := i.saveState(); err != nil {
		return nil, fmt.Errorf("record the failed agent update of job %s: %w", jobID, err)
	}
	return failed, nil
}
