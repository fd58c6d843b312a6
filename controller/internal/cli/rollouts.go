package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// strategyFlags are the rollout strategy knobs shared by create and undo.
type strategyFlags struct {
	canary           uint32
	autoPromote      bool
	maxParallel      string
	maxFailures      string
	onFailure        string
	progressDeadline time.Duration
	healthyFor       time.Duration
}

func (s *strategyFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Uint32Var(&s.canary, "canary", 1, "`N` nodes go first, alone; the rollout then waits for 'ferryctl rollout promote ID' unless --auto-promote (0: no canary wave)")
	f.BoolVar(&s.autoPromote, "auto-promote", false, "continue after the canaries without waiting for promotion")
	f.StringVar(&s.maxParallel, "max-parallel", "1", "jobs in flight at once: a count (2) or a percent of the targets (25%); a sliding window")
	f.StringVar(&s.maxFailures, "max-failures", "0", "failures tolerated over the whole rollout: a count or a percent")
	f.StringVar(&s.onFailure, "on-failure", "pause", "what to do when max-failures is exceeded: pause, abort or rollback")
	f.DurationVar(&s.progressDeadline, "progress-deadline", 10*time.Minute, "how long one node may take before it counts as failed")
	f.DurationVar(&s.healthyFor, "healthy-for", 10*time.Second, "how long a node must keep heartbeating after its checks pass (0s: it succeeds on its job report)")
}

func (s *strategyFlags) proto() (*ferryv1.Strategy, error) {
	var action ferryv1.FailureAction
	switch s.onFailure {
	case "pause":
		action = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
	case "abort":
		action = ferryv1.FailureAction_FAILURE_ACTION_ABORT
	case "rollback":
		action = ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK
	default:
		return nil, fmt.Errorf("--on-failure %q: use pause, abort or rollback", s.onFailure)
	}
	return &ferryv1.Strategy{
		Canary: &s.canary, AutoPromote: s.autoPromote, MaxParallel: s.maxParallel, MaxFailures: s.maxFailures,
		OnFailure: action, ProgressDeadline: durationpb.New(s.progressDeadline), HealthyFor: durationpb.New(s.healthyFor),
	}, nil
}

func parseSelector(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--selector %q: want key=value[,key=value...]", s)
		}
		out[k] = v
	}
	return out, nil
}

func (a *app) rolloutCmd() *cobra.Command {
	var group, selector, pkg, remove string
	var plan, detach bool
	var strat strategyFlags
	cmd := &cobra.Command{
		Use:   "rollout --group G (--package NAME@VERSION | --remove NAME)",
		Short: "Roll a package out to a group (or a label selector) and watch it",
		Long: `Roll a package out to a group and/or the nodes matching a label selector.

Defaults are cautious: one canary, then a wait for 'ferryctl rollout promote';
one node at a time; the first failure pauses the rollout; a node has 10m to
finish and must keep heartbeating 10s after its checks pass. Nodes not
connected at the start are reported unreachable, never waited on.

On a terminal the command shows live progress until the rollout ends; it
exits 0 only if the rollout succeeded. --detach prints the rollout ID and
returns at once; --plan shows what would change and changes nothing.

--remove NAME removes a package instead: each node deletes the trees and
files its installed version put in place (nodes without it are unchanged),
under the same canary, window and failure policy (pause or abort; a
removal is not rolled back).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var name, version string
			switch {
			case remove != "" && pkg != "":
				return errors.New("use --package NAME@VERSION to install or --remove NAME to remove, not both")
			case remove != "":
				if strings.Contains(remove, "@") {
					return fmt.Errorf("--remove %s: name the package without a version; a node removes whichever version it has", remove)
				}
				name = remove
			case pkg == "":
				return errors.New("--package NAME@VERSION is required (e.g. --package go@1.20.3), or --remove NAME to remove a package")
			default:
				var err error
				if name, version, err = splitRef(pkg); err != nil {
					return err
				}
			}
			sel, err := parseSelector(selector)
			if err != nil {
				return err
			}
			if group == "" && len(sel) == 0 {
				return errors.New("choose the nodes with --group and/or --selector")
			}
			st, err := strat.proto()
			if err != nil {
				return err
			}
			var resp *ferryv1.CreateRolloutResponse
			// CreateRollout is given a minute more than --timeout.
			err = a.rpcWithin(cmd, a.timeout+time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
				var err error
				resp, err = ferryv1.NewRolloutServiceClient(conn).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
					PackageName: name, PackageVersion: version, Target: &ferryv1.Target{Group: group, Selector: sel}, Strategy: st, Plan: plan, Remove: remove != "",
				})
				return err
			})
			if err != nil {
				return err
			}
			if plan {
				return a.printPlan(resp.Plan)
			}
			if detach {
				return a.show(resp.Rollout, func() error {
					fmt.Fprintln(a.stdout, resp.Rollout.Id)
					return nil
				})
			}
			return a.follow(cmd.Context(), resp.Rollout.Id, true)
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "target group")
	cmd.Flags().StringVar(&selector, "selector", "", "target labels key=value[,key=value] (all must match)")
	cmd.Flags().StringVar(&pkg, "package", "", "package NAME@VERSION to install")
	cmd.Flags().StringVar(&remove, "remove", "", "package NAME to remove from the nodes instead")
	cmd.Flags().BoolVar(&plan, "plan", false, "print the nodes, waves and per-node changes; change nothing")
	cmd.Flags().BoolVar(&detach, "detach", false, "print the rollout ID and return without watching")
	strat.add(cmd)
	cmd.AddCommand(a.rolloutStatusCmd(), a.rolloutListCmd(), a.rolloutHistoryCmd(), a.rolloutUndoCmd())
	cmd.AddCommand(a.rolloutActionCmds()...)
	return cmd
}

// printPlan shows the plan and returns an ExitError when it failed on a
// node: a script that plans first stops there.
func (a *app) printPlan(plan []*ferryv1.NodePlan) error {
	sort.SliceStable(plan, func(i, j int) bool { return plan[i].Wave < plan[j].Wave })
	var failed []string
	for _, p := range plan {
		if p.Failed {
			failed = append(failed, p.NodeId)
		}
	}
	if a.machine() {
		if err := a.emit(plan); err != nil {
			return err
		}
	} else {
		a.printPlanText(plan)
	}
	if len(failed) > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("the plan failed on %d of %d nodes (%s); nothing was changed", len(failed), len(plan), strings.Join(failed, ", "))}
	}
	return nil
}

func (a *app) printPlanText(plan []*ferryv1.NodePlan) {
	for _, p := range plan {
		wave := "canary"
		if p.Wave > 0 {
			wave = fmt.Sprintf("wave %d", p.Wave)
		}
		fmt.Fprintf(a.stdout, "%s (%s)", p.NodeId, wave)
		if p.ToVersion != "" || p.Removed {
			fmt.Fprintf(a.stdout, ": %s", planTransition(p))
		}
		if p.Note != "" {
			fmt.Fprintf(a.stdout, ": %s", p.Note)
		}
		fmt.Fprintln(a.stdout)
		for _, s := range p.Steps {
			mark := "  unchanged"
			switch {
			case s.Error != "":
				mark = "  ! failed  "
			case s.Changed:
				mark = "  ~ change "
			}
			line := s.Name
			if s.Detail != "" {
				line += ": " + s.Detail
			}
			if s.Error != "" {
				line += ": " + s.Error
			}
			fmt.Fprintf(a.stdout, "  %s %s\n", mark, line)
		}
	}
	fmt.Fprintln(a.stdout, "\nplan only: nothing was changed")
}

// planTransition is "1.26.8 → 1.20.3" or "1.26.8 → removed".
func planTransition(p *ferryv1.NodePlan) string {
	from, to := p.FromVersion, p.ToVersion
	if from == "" {
		from = "none"
	}
	if p.Removed {
		to = "removed"
	}
	return from + " → " + to
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// follow watches a rollout until it ends and returns an ExitError unless it
// succeeded.
func (a *app) follow(ctx context.Context, id string, started bool) error {
	conn, err := a.connect()
	if err != nil {
		return err
	}
	client := ferryv1.NewRolloutServiceClient(conn)
	open := func(ctx context.Context, opts ...grpc.CallOption) (grpc.ServerStreamingClient[ferryv1.WatchRolloutResponse], error) {
		return client.WatchRollout(ctx, &ferryv1.WatchRolloutRequest{Id: id}, opts...)
	}
	tty := !a.machine() && isTerminal(a.stdout)
	var last *ferryv1.Rollout
	if !a.machine() && started {
		fmt.Fprintf(a.stdout, "rollout %s started; follow it elsewhere with `ferryctl rollout status %s --watch`\n", id, id)
	}
	err = watch(ctx, a, open, func(ev *ferryv1.WatchRolloutResponse) error {
		last = ev.Rollout
		switch {
		case a.machine():
			return a.emit(ev)
		case tty:
			fmt.Fprint(a.stdout, "\r\033[K")
			if ev.Event != "" {
				fmt.Fprintln(a.stdout, eventLine(ev))
			}
			fmt.Fprint(a.stdout, progressLine(ev.Rollout, true))
		default:
			if ev.Event != "" {
				fmt.Fprintln(a.stdout, eventLine(ev))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if last == nil {
		return fmt.Errorf("rollout %s: the watch ended without events", id)
	}
	if tty {
		fmt.Fprintln(a.stdout)
	}
	if !a.machine() {
		fmt.Fprintln(a.stdout, progressLine(last, false))
		a.printFailures(last)
	}
	if last.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		return &ExitError{Code: 1, Err: fmt.Errorf("rollout %s ended %s: %s", id, enumword.Spaced(last.State), last.Message)}
	}
	return nil
}

func eventLine(ev *ferryv1.WatchRolloutResponse) string {
	at := time.Now()
	if ev.At != nil {
		at = ev.At.AsTime().Local()
	}
	if ev.NodeId != "" {
		return fmt.Sprintf("%s  %-12s %s", at.Format("15:04:05"), ev.NodeId, ev.Event)
	}
	return fmt.Sprintf("%s  %-12s %s", at.Format("15:04:05"), "rollout", ev.Event)
}

// progressLine is "[#####-----] 3/6  succeeded 2  installing 1 ... state".
func progressLine(r *ferryv1.Rollout, bar bool) string {
	counts := map[ferryv1.NodeOutcome]int{}
	done := 0
	for _, n := range r.Nodes {
		counts[n.Outcome]++
		switch n.Outcome {
		case ferryv1.NodeOutcome_NODE_OUTCOME_PENDING, ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING,
			ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING, ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING:
		default:
			done++
		}
	}
	var b strings.Builder
	if bar {
		const width = 24
		filled := 0
		if len(r.Nodes) > 0 {
			filled = done * width / len(r.Nodes)
		}
		b.WriteString("[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "] ")
	}
	fmt.Fprintf(&b, "%d/%d done", done, len(r.Nodes))
	for o := ferryv1.NodeOutcome(1); int(o) < len(ferryv1.NodeOutcome_name); o++ {
		if c := counts[o]; c > 0 {
			fmt.Fprintf(&b, "  %s %d", enumword.Spaced(o), c)
		}
	}
	fmt.Fprintf(&b, "  | %s", enumword.Spaced(r.State))
	if r.State == ferryv1.RolloutState_ROLLOUT_STATE_WAITING_PROMOTION {
		fmt.Fprintf(&b, ": run `ferryctl rollout promote %s`", r.Id)
	}
	return b.String()
}

func (a *app) printFailures(r *ferryv1.Rollout) {
	for _, n := range r.Nodes {
		switch n.Outcome {
		case ferryv1.NodeOutcome_NODE_OUTCOME_FAILED, ferryv1.NodeOutcome_NODE_OUTCOME_UNREACHABLE:
			fmt.Fprintf(a.stdout, "  %s %s: %s (logs: ferryctl logs %s %s)\n", n.NodeId, enumword.Spaced(n.Outcome), jobDetail(n), r.Id, n.NodeId)
		}
	}
	if failedNodes(r) > 0 {
		fmt.Fprintf(a.stdout, "see why: ferryctl logs %s --failed\n", r.Id)
	}
}

func (a *app) rolloutStatusCmd() *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a rollout and each node's outcome",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch {
				return a.follow(cmd.Context(), args[0], false)
			}
			resp, err := call(a, cmd, ferryv1.NewRolloutServiceClient, ferryv1.RolloutServiceClient.GetRollout, &ferryv1.GetRolloutRequest{Id: args[0]})
			if err != nil {
				return err
			}
			r := resp.Rollout
			if err := a.show(r, func() error { return a.printRollout(r) }); err != nil {
				return err
			}
			if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED && rolloutstate.Terminal(r.State) {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "watch until the rollout ends")
	return cmd
}

func (a *app) printRollout(r *ferryv1.Rollout) error {
	fmt.Fprintf(a.stdout, "Rollout:  %s\nPackage:  %s\nTarget:   %s\nState:    %s  %s\nCreated:  %s by %s\n\n",
		r.Id, rolloutPackage(r), targetString(r.Target), enumword.Spaced(r.State), r.Message,
		r.CreatedAt.AsTime().Local().Format(time.RFC3339), r.CreatedBy)
	return printTable(a, []string{"NODE", "WAVE", "OUTCOME", "TOOK", "PREVIOUS", "DETAIL"}, r.Nodes, func(n *ferryv1.NodeJob) []string {
		took := "-"
		if n.StartedAt != nil && n.FinishedAt != nil {
			took = n.FinishedAt.AsTime().Sub(n.StartedAt.AsTime()).Round(100 * time.Millisecond).String()
		}
		prev := orDash(n.PreviousVersion)
		if r.JobKind != ferryv1.JobKind_JOB_KIND_INSTALL {
			// An undo or removal: from what to what.
			prev = planTransition(&ferryv1.NodePlan{FromVersion: n.PreviousVersion, ToVersion: n.TargetVersion, Removed: n.TargetVersion == ""})
		}
		return []string{n.NodeId, fmt.Sprint(n.Wave), enumword.Spaced(n.Outcome), took, prev, oneLine(jobDetail(n))}
	})
}

// rolloutPackage names what a rollout applies: "go@1.20.3", "go (undo)",
// "go (remove)".
func rolloutPackage(r *ferryv1.Rollout) string {
	switch r.JobKind {
	case ferryv1.JobKind_JOB_KIND_ROLLBACK:
		return r.PackageName + " (undo)"
	case ferryv1.JobKind_JOB_KIND_REMOVE:
		return r.PackageName + " (remove)"
	}
	return r.PackageName + "@" + r.PackageVersion
}

// oneLine puts s on one line of at most 160 characters for a table cell.
// A longer one loses its middle, not its end: an error's reason comes last
// ("step archive -> /usr/local/go: extract go.tar.gz: ...: entry ../x
// escapes dest").
func oneLine(s string) string {
	const limit, head = 160, 60
	r := []rune(strings.Join(strings.Fields(s), " "))
	if len(r) <= limit {
		return string(r)
	}
	return string(r[:head]) + " … " + string(r[len(r)-(limit-head-3):])
}

func targetString(t *ferryv1.Target) string {
	var parts []string
	if t.GetGroup() != "" {
		parts = append(parts, "group="+t.GetGroup())
	}
	keys := make([]string, 0, len(t.GetSelector()))
	for k := range t.GetSelector() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+t.GetSelector()[k])
	}
	return strings.Join(parts, ",")
}

func (a *app) listRollouts(cmd *cobra.Command, pkg string, limit uint32) error {
	resp, err := call(a, cmd, ferryv1.NewRolloutServiceClient, ferryv1.RolloutServiceClient.ListRollouts, &ferryv1.ListRolloutsRequest{PackageName: pkg, Limit: limit})
	if err != nil {
		return err
	}
	return a.show(resp, func() error {
		return printTable(a, []string{"ROLLOUT", "PACKAGE", "KIND", "TARGET", "STATE", "CREATED", "BY"}, resp.Rollouts, func(r *ferryv1.Rollout) []string {
			kind, pkg := "install", r.PackageName+"@"+r.PackageVersion
			switch r.JobKind {
			case ferryv1.JobKind_JOB_KIND_ROLLBACK:
				kind = strings.TrimSpace("undo " + r.UndoOf)
			case ferryv1.JobKind_JOB_KIND_REMOVE:
				kind, pkg = "remove", r.PackageName
			}
			if r.Kind == ferryv1.RolloutKind_ROLLOUT_KIND_CATCH_UP {
				kind = "catch-up " + r.CatchUpOf
			}
			return []string{r.Id, pkg, kind, targetString(r.Target), enumword.Spaced(r.State), r.CreatedAt.AsTime().Local().Format(time.RFC3339), r.CreatedBy}
		})
	})
}

func (a *app) rolloutListCmd() *cobra.Command {
	var pkg string
	var limit uint32
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.listRollouts(cmd, pkg, limit) },
	}
	cmd.Flags().StringVar(&pkg, "package", "", "only rollouts of this package name")
	cmd.Flags().Uint32Var(&limit, "limit", 50, "at most this many")
	return cmd
}

func (a *app) rolloutHistoryCmd() *cobra.Command {
	var pkg string
	cmd := &cobra.Command{
		Use:   "history --package NAME",
		Short: "Show the rollouts of a package, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pkg == "" {
				return errors.New("--package NAME is required")
			}
			return a.listRollouts(cmd, pkg, 1000)
		},
	}
	cmd.Flags().StringVar(&pkg, "package", "", "package name (required)")
	return cmd
}

// rolloutReply is the answer to a rollout action: the rollout after it.
type rolloutReply interface{ GetRollout() *ferryv1.Rollout }

// rolloutActionCmds are promote, pause, resume and abort: each takes a
// rollout ID and prints the rollout's state after the action.
func (a *app) rolloutActionCmds() []*cobra.Command {
	type rolloutAction func(context.Context, ferryv1.RolloutServiceClient, string) (rolloutReply, error)
	actions := []struct {
		verb, done, short string
		act               rolloutAction
	}{
		{"promote", "promoted", "Let a rollout waiting after its canaries go on", func(ctx context.Context, c ferryv1.RolloutServiceClient, id string) (rolloutReply, error) {
			return c.PromoteRollout(ctx, &ferryv1.PromoteRolloutRequest{Id: id})
		}},
		{"pause", "paused", "Stop starting new jobs; running jobs finish", func(ctx context.Context, c ferryv1.RolloutServiceClient, id string) (rolloutReply, error) {
			return c.PauseRollout(ctx, &ferryv1.PauseRolloutRequest{Id: id})
		}},
		{"resume", "resumed", "Continue a paused rollout", func(ctx context.Context, c ferryv1.RolloutServiceClient, id string) (rolloutReply, error) {
			return c.ResumeRollout(ctx, &ferryv1.ResumeRolloutRequest{Id: id})
		}},
		{"abort", "aborted", "Stop a rollout; nodes not started are skipped", func(ctx context.Context, c ferryv1.RolloutServiceClient, id string) (rolloutReply, error) {
			return c.AbortRollout(ctx, &ferryv1.AbortRolloutRequest{Id: id})
		}},
	}
	cmds := make([]*cobra.Command, 0, len(actions))
	for _, ac := range actions {
		cmds = append(cmds, &cobra.Command{
			Use:   ac.verb + " ID",
			Short: ac.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var r *ferryv1.Rollout
				err := a.rpc(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
					resp, err := ac.act(ctx, ferryv1.NewRolloutServiceClient(conn), args[0])
					if err != nil {
						return err
					}
					r = resp.GetRollout()
					return nil
				})
				if err != nil {
					return err
				}
				return a.show(r, func() error {
					fmt.Fprintf(a.stdout, "rollout %s %s; now %s\n", r.Id, ac.done, enumword.Spaced(r.State))
					return nil
				})
			},
		})
	}
	return cmds
}

func (a *app) rolloutUndoCmd() *cobra.Command {
	var group, pkg, toVersion, toRollout, selector string
	var detach, plan bool
	var strat strategyFlags
	cmd := &cobra.Command{
		Use:   "undo --group G --package NAME [--to-version V | --to-rollout ID] [--selector k=v] [--plan]",
		Short: "Take a group's nodes back to the version of a package they had before its latest change",
		Long: `Take the nodes of a group back, each to the version of the package it had
before its latest change, whatever rollouts came since (aborted or no-op
rollouts change nothing, so they are not in the way). --to-version V takes
every node to that stored version; --to-rollout ID takes each node that
rollout changed back to the version it had before it. --selector narrows
the group.

A node goes back by a rollback when its agent keeps the target version
(or the target is "removed" and it was the first install), else by an
install of the stored target version, or by removing the package. The
announcement and --plan say per node from what to what, e.g.
"1.26.8 → 1.20.3" or "1.26.8 → removed"; --plan changes nothing and exits
non-zero when the undo would be refused. The undo is a rollout: the
strategy flags apply as they do to 'ferryctl rollout'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group == "" || pkg == "" {
				return errors.New("--group and --package are required, e.g. ferryctl rollout undo --group production --package go")
			}
			if strings.Contains(pkg, "@") {
				return fmt.Errorf("--package %s: name the package without a version; to go to a version use --to-version", pkg)
			}
			if toVersion != "" && toRollout != "" {
				return errors.New("use --to-version or --to-rollout, not both")
			}
			sel, err := parseSelector(selector)
			if err != nil {
				return err
			}
			st, err := strat.proto()
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, ferryv1.NewRolloutServiceClient, ferryv1.RolloutServiceClient.UndoRollout, &ferryv1.UndoRolloutRequest{
				Group: group, PackageName: pkg, Strategy: st, ToVersion: toVersion, ToRollout: toRollout, Selector: sel, Plan: plan,
			})
			if err != nil {
				return err
			}
			if plan {
				return a.printPlan(resp.Plan)
			}
			if detach {
				return a.show(resp.Rollout, func() error {
					fmt.Fprintln(a.stdout, resp.Rollout.Id)
					return nil
				})
			}
			if a.output != "json" {
				fmt.Fprintln(a.stdout, resp.Rollout.Message)
			}
			return a.follow(cmd.Context(), resp.Rollout.Id, true)
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "group whose nodes go back (required)")
	cmd.Flags().StringVar(&pkg, "package", "", "package name (required)")
	cmd.Flags().StringVar(&toVersion, "to-version", "", "take every node to this stored version")
	cmd.Flags().StringVar(&toRollout, "to-rollout", "", "take the nodes this rollout changed back to what they had before it")
	cmd.Flags().StringVar(&selector, "selector", "", "only the group's nodes with these labels key=value[,key=value]")
	cmd.Flags().BoolVar(&plan, "plan", false, "print per node from what to what; change nothing")
	cmd.Flags().BoolVar(&detach, "detach", false, "print the undo rollout's ID and return")
	strat.add(cmd)
	return cmd
}
