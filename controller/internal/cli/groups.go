package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

func (a *app) groupCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "group", Short: "Show a group's desired versions and the nodes behind them; set its catch-up"}
	show := &cobra.Command{
		Use:   "show GROUP",
		Short: "Show a group's desired versions, catch-up settings and the nodes not on a desired version (and why)",
		Long: `Show a group's desired versions (what the last successful rollout or undo
of each package to the whole group left it on), its catch-up settings, and
the nodes not on a desired version, with where their catch-up stands:
pending, running, failed (with the reason), waiting (not connected),
blocked (another rollout or catch-up comes first), off, or held (left as it
is, the reason says why).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, ferryv1.NewGroupServiceClient, ferryv1.GroupServiceClient.GetGroup, &ferryv1.GetGroupRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return a.show(resp, func() error { return a.printGroup(resp.GetGroup()) })
		},
	}
	var catchUp bool
	var parallel uint32
	var retry bool
	set := &cobra.Command{
		Use:   "set GROUP [--catch-up=true|false] [--catch-up-parallel N] [--retry]",
		Short: "Turn a group's catch-up on or off, set how many catch-up jobs run at once, or retry failed ones",
		Long: `Change how the controller catches up the nodes of a group that are not on
its desired versions (nodes enrolled later, unreachable during the rollout,
or moved into the group). Catch-up is on by default, one node at a time.
--retry gives every node that is behind another catch-up, including nodes
whose catch-up failed or was aborted. Audited.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &ferryv1.UpdateGroupRequest{Name: args[0], Retry: retry}
			if cmd.Flags().Changed("catch-up") {
				req.CatchUp = &catchUp
			}
			if cmd.Flags().Changed("catch-up-parallel") {
				req.CatchUpParallel = &parallel
			}
			if req.CatchUp == nil && req.CatchUpParallel == nil && !retry {
				return errors.New("nothing to change: set --catch-up=true|false, --catch-up-parallel N or --retry")
			}
			resp, err := call(a, cmd, ferryv1.NewGroupServiceClient, ferryv1.GroupServiceClient.UpdateGroup, req)
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				g := resp.GetGroup()
				fmt.Fprintf(a.stdout, "group %s: %s\n", g.GetName(), catchUpText(g))
				if retry {
					fmt.Fprintln(a.stdout, "nodes behind get another catch-up; follow with `ferryctl group show "+g.GetName()+"`")
				}
				return nil
			})
		},
	}
	set.Flags().BoolVar(&catchUp, "catch-up", true, "catch nodes behind up automatically")
	set.Flags().Uint32Var(&parallel, "catch-up-parallel", 1, "catch-up jobs in flight at once in the group")
	set.Flags().BoolVar(&retry, "retry", false, "give nodes whose catch-up failed or was aborted another one")
	cmd.AddCommand(show, set)
	return cmd
}

func catchUpText(g *ferryv1.Group) string {
	if !g.GetCatchUp() {
		return "catch-up off"
	}
	return fmt.Sprintf("catch-up on, %d at a time", g.GetCatchUpParallel())
}

func (a *app) printGroup(g *ferryv1.Group) error {
	fmt.Fprintf(a.stdout, "group %s: %d nodes, %s\n", g.GetName(), g.GetNodeCount(), catchUpText(g))
	if len(g.GetDesired()) == 0 {
		fmt.Fprintln(a.stdout, "\nno desired versions yet: a successful rollout to the whole group records one")
		return nil
	}
	fmt.Fprintln(a.stdout, "\nDESIRED")
	if err := printTable(a, []string{"PACKAGE", "VERSION", "SET BY ROLLOUT", "BY", "SINCE"}, g.GetDesired(), func(d *ferryv1.DesiredPackage) []string {
		v := d.GetVersion()
		if d.GetRemoved() {
			v = "(removed)"
		}
		return []string{d.GetName(), v, d.GetRolloutId(), d.GetSetBy(), d.GetSince().AsTime().Local().Format(time.RFC3339)}
	}); err != nil {
		return err
	}
	if len(g.GetBehind()) == 0 {
		fmt.Fprintln(a.stdout, "\nevery node is on the desired versions")
		return nil
	}
	fmt.Fprintln(a.stdout, "\nBEHIND")
	return printTable(a, []string{"NODE", "PACKAGE", "HAS", "WANTS", "STATUS", "ROLLOUT", "WHY"}, g.GetBehind(), func(b *ferryv1.BehindNode) []string {
		want := b.GetDesiredVersion()
		if b.GetDesiredRemoved() {
			want = "(removed)"
		}
		return []string{b.GetNodeId(), b.GetPackageName(), orDash(b.GetInstalledVersion()), want, enumword.Of(b.GetStatus()), orDash(b.GetRolloutId()), b.GetReason()}
	})
}
