package install

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

const (
	defaultServiceTimeout = 30 * time.Second
	// servicePoll is how often a service step asks whether its unit is
	// active yet.
	servicePoll = 200 * time.Millisecond
	// systemctlTimeout bounds one systemctl call other than the wait.
	systemctlTimeout = 2 * time.Minute
)

// serviceKind restarts, reloads or enables a systemd unit after the steps
// before it, then waits until the unit is active. It runs systemctl from
// PATH (or Config.Systemctl) with an argument list, never a shell, the
// unit after "--", and the unit checked by installpolicy.ServiceUnit.
//
// Nothing before it changed and the unit is active (and enabled, for
// enable): the step is unchanged, so a job sent twice restarts nothing.
// Otherwise it journals what the unit was (active, enabled) before acting.
// The change is a settler: when the job fails, it is undone after every
// file and tree is back, by restarting the unit on the restored files (or
// stopping it, and disabling it, when it was not running or enabled
// before). A rollback does the same after restoring the previous version.
type serviceKind struct{ i *Installer }

// Change: a unit acted on.
func (serviceKind) Change() string { return "service" }

// Settles: undone last.
func (serviceKind) Settles() {}

func (serviceKind) Describe(s *ferryv1.Step) string {
	sv := s.GetService()
	return "service " + serviceVerb(sv.GetAction()) + " " + sv.GetUnit()
}

func serviceVerb(a ferryv1.ServiceAction) string {
	switch a {
	case ferryv1.ServiceAction_SERVICE_ACTION_RELOAD:
		return "reload"
	case ferryv1.ServiceAction_SERVICE_ACTION_ENABLE:
		return "enable"
	default:
		return "restart"
	}
}

func (serviceKind) Validate(r validateRequest) error {
	s := r.step.GetService()
	unit, refusal := installpolicy.ServiceUnit(s.GetUnit())
	switch {
	case refusal != nil:
		return refusal
	case unit != s.GetUnit():
		return fmt.Errorf("unit %q is not in its full form %q; apply the package again with a current ferryctl", s.GetUnit(), unit)
	case s.GetAction() < ferryv1.ServiceAction_SERVICE_ACTION_UNSPECIFIED || s.GetAction() > ferryv1.ServiceAction_SERVICE_ACTION_ENABLE:
		return fmt.Errorf("unit %s: unknown action %d; this agent knows restart, reload and enable", unit, s.GetAction())
	case s.GetTimeout().AsDuration() < 0:
		return errors.New("negative timeout")
	}
	return nil
}

// unitState is what systemctl says of a unit.
type unitState struct {
	active  string // is-active's word: active, inactive, failed, activating, ...
	enabled bool
}

func (k serviceKind) state(ctx context.Context, unit string, enable bool) (unitState, error) {
	var st unitState
	word, _, err := k.i.systemctl(ctx, "is-active", unit)
	if err != nil {
		return st, err
	}
	st.active = word
	if enable {
		word, _, err := k.i.systemctl(ctx, "is-enabled", unit)
		if err != nil {
			return st, err
		}
		st.enabled = word == "enabled" || word == "enabled-runtime" || word == "static" || word == "alias"
	}
	return st, nil
}

// todo says what a step must run given the unit's state and whether the
// steps before it changed anything; nil: nothing.
func todo(s *ferryv1.ServiceStep, st unitState, changedBefore bool) [][]string {
	active := st.active == "active"
	unit := s.GetUnit()
	switch s.GetAction() {
	case ferryv1.ServiceAction_SERVICE_ACTION_RELOAD:
		switch {
		case !active:
			return [][]string{{"start", unit}}
		case changedBefore:
			return [][]string{{"reload", unit}}
		}
	case ferryv1.ServiceAction_SERVICE_ACTION_ENABLE:
		var cmds [][]string
		if !st.enabled {
			cmds = append(cmds, []string{"enable", unit})
		}
		switch {
		case !active:
			cmds = append(cmds, []string{"start", unit})
		case changedBefore:
			cmds = append(cmds, []string{"restart", unit})
		}
		return cmds
	default:
		if !active || changedBefore {
			return [][]string{{"restart", unit}}
		}
	}
	return nil
}

func why(st unitState, changedBefore bool) string {
	if changedBefore {
		return "an earlier step changed the node"
	}
	return "it is " + st.active
}

func (k serviceKind) Plan(ctx context.Context, r stepRequest) (stepResponse, error) {
	s := r.step.GetService()
	enable := s.GetAction() == ferryv1.ServiceAction_SERVICE_ACTION_ENABLE
	st, err := k.state(ctx, s.GetUnit(), enable)
	if err != nil {
		return stepResponse{}, err
	}
	// In a plan, changed says whether a step before would change the node.
	cmds := todo(s, st, r.job.changed)
	if len(cmds) == 0 {
		return stepResponse{detail: s.GetUnit() + " is active and nothing before it would change"}, nil
	}
	return stepResponse{changed: true, detail: fmt.Sprintf("would run systemctl %s (%s)", joinCmds(cmds), why(st, r.job.changed))}, nil
}

func joinCmds(cmds [][]string) string {
	var parts []string
	for _, c := range cmds {
		parts = append(parts, strings.Join(c, " "))
	}
	return strings.Join(parts, ", then ")
}

func (k serviceKind) Apply(ctx context.Context, r stepRequest) (stepResponse, error) {
	i, jc, s := k.i, r.job, r.step.GetService()
	unit := s.GetUnit()
	enable := s.GetAction() == ferryv1.ServiceAction_SERVICE_ACTION_ENABLE
	st, err := k.state(ctx, unit, enable)
	if err != nil {
		return stepResponse{}, err
	}
	cmds := todo(s, st, jc.changed)
	if len(cmds) == 0 {
		return stepResponse{detail: unit + " is active and nothing before it changed"}, nil
	}
	timeout := s.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultServiceTimeout
	}
	a := &action{
		Kind: k.Change(), Step: r.index, Target: unit, State: "prepared",
		Service: &serviceChange{WasActive: st.active == "active", WasEnabled: st.enabled, Enable: enable, Timeout: timeout},
	}
	if err := i.addAction(jc, "install", a); err != nil {
		return stepResponse{}, err
	}
	var out strings.Builder
	for _, c := range cmds {
		_, o, err := i.systemctl(ctx, c...)
		out.WriteString(o)
		if err != nil {
			return stepResponse{output: out.String()}, err
		}
		jc.note(k.Describe(r.step), "ran systemctl "+strings.Join(c, " "))
	}
	a.State = "applied"
	if err := jc.save(); err != nil {
		return stepResponse{}, err
	}
	if err := i.waitActive(ctx, unit, timeout); err != nil {
		return stepResponse{output: out.String() + i.unitStatus(context.WithoutCancel(ctx), unit)}, err
	}
	return stepResponse{changed: true, detail: fmt.Sprintf("ran systemctl %s (%s); %s is active", joinCmds(cmds), why(st, jc.changed), unit), output: out.String()}, nil
}

// Undo puts the unit back as it was, once the files it reads are back:
// restarted on them when it was running, stopped when it was not, and
// disabled again when the step enabled it.
func (k serviceKind) Undo(r undoRequest) error {
	_, err := k.settle(r.change)
	return err
}

// Restore, in a rollback, restarts (or stops) the unit on the version
// just restored, journaling that it did so the rollback can be undone in
// turn.
func (k serviceKind) Restore(r restoreRequest) (restoreResponse, error) {
	a := r.change
	enable := a.Service != nil && a.Service.Enable
	st, err := k.state(context.Background(), a.Target, enable)
	if err != nil {
		return restoreResponse{}, err
	}
	b := &action{Kind: k.Change(), Step: a.Step, Target: a.Target, State: "applied", Service: &serviceChange{
		WasActive: st.active == "active", WasEnabled: st.enabled, Enable: enable, Timeout: a.serviceTimeout(),
	}}
	if err := k.i.addAction(r.job, "rollback", b); err != nil {
		return restoreResponse{}, err
	}
	detail, err := k.settle(a)
	return restoreResponse{detail: detail}, err
}

// settle brings a unit back to what a change recorded it was.
func (k serviceKind) settle(a *action) (string, error) {
	i, unit, sc := k.i, a.Target, a.Service
	if sc == nil {
		sc = &serviceChange{WasActive: true}
	}
	if _, r := installpolicy.ServiceUnit(unit); r != nil {
		return "", r // a journal is the agent's own file, but a unit name goes to systemctl
	}
	ctx, cancel := context.WithTimeout(context.Background(), systemctlTimeout)
	defer cancel()
	var done []string
	if sc.Enable && !sc.WasEnabled {
		if _, _, err := i.systemctl(ctx, "disable", unit); err != nil {
			return "", err
		}
		done = append(done, "disabled")
	}
	if !sc.WasActive {
		if _, _, err := i.systemctl(ctx, "stop", unit); err != nil {
			return "", err
		}
		return strings.Join(append(done, "stopped "+unit+" (it was not running before)"), ", "), nil
	}
	if _, _, err := i.systemctl(ctx, "restart", unit); err != nil {
		return "", err
	}
	if err := i.waitActive(context.Background(), unit, a.serviceTimeout()); err != nil {
		return "", fmt.Errorf("restarted on the restored files, but: %w", err)
	}
	return strings.Join(append(done, "restarted "+unit+" on the restored files; it is active"), ", "), nil
}

// serviceChange is what a service change journals about its unit.
type serviceChange struct {
	WasActive  bool          `json:"was_active"`
	WasEnabled bool          `json:"was_enabled,omitempty"`
	Enable     bool          `json:"enable,omitempty"`
	Timeout    time.Duration `json:"timeout,omitempty"`
}

func (a *action) serviceTimeout() time.Duration {
	if a.Service == nil || a.Service.Timeout <= 0 {
		return defaultServiceTimeout
	}
	return a.Service.Timeout
}

// waitActive polls is-active until the unit is active, has failed, or
// the timeout passes.
func (i *Installer) waitActive(ctx context.Context, unit string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		word, _, err := i.systemctl(ctx, "is-active", unit)
		switch {
		case err != nil:
			return err
		case word == "active":
			return nil
		case word == "failed":
			return fmt.Errorf("%s failed to start; see journalctl -u %s on the node", unit, unit)
		}
		last = word
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s did not become active within %v (it is %s); see journalctl -u %s on the node", unit, timeout, last, unit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(servicePoll, time.Until(deadline)+time.Millisecond)):
		}
	}
}

// unitStatus is the end of systemctl status for a failed step's output
// (even when the job was cancelled: ctx should not be).
func (i *Installer) unitStatus(ctx context.Context, unit string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, out, _ := i.systemctl(ctx, "status", "--no-pager", "--lines=10", unit)
	return out
}

// systemctl runs systemctl with args, the last of them a unit after "--".
// It returns the first line of the output (is-active's and is-enabled's
// answer) and the whole output, bounded. A non-zero exit is an error
// except for is-active and is-enabled, whose exit status is their answer.
func (i *Installer) systemctl(ctx context.Context, args ...string) (string, string, error) {
	bin := i.systemctlPath
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("systemctl"); err != nil {
			return "", "", errors.New("systemctl is not in the agent's PATH: a service step needs systemd on the node")
		}
	}
	verb, unit := args[0], args[len(args)-1]
	argv := append(append([]string{}, args[:len(args)-1]...), "--", unit)
	cctx, cancel := context.WithTimeout(ctx, systemctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, argv...)
	cmd.WaitDelay = 2 * time.Second
	out := &outputLog{max: maxCheckOutput}
	discard := out.stream(func(string) {}) // kept in the step's output, not logged line by line
	cmd.Stdout, cmd.Stderr = discard, discard
	err := cmd.Run()
	text := out.String()
	first := strings.TrimSpace(text)
	if k := strings.IndexByte(first, '\n'); k >= 0 {
		first = first[:k]
	}
	var ee *exec.ExitError
	switch {
	case cctx.Err() != nil && ctx.Err() == nil:
		return first, text, fmt.Errorf("systemctl %s %s did not answer within %v", verb, unit, systemctlTimeout)
	case ctx.Err() != nil:
		return first, text, ctx.Err()
	case err == nil:
		return first, text, nil
	case errors.As(err, &ee) && (verb == "is-active" || verb == "is-enabled"):
		return first, text, nil
	case errors.As(err, &ee):
		return first, text, fmt.Errorf("systemctl %s %s exited with status %d: %s", verb, unit, ee.ExitCode(), lastLine(text))
	default:
		return first, text, fmt.Errorf("systemctl %s %s: %w", verb, unit, err)
	}
}
