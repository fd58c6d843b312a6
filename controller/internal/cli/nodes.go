package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/metrics"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func parseStates(s string) ([]ferryv1.NodeState, error) {
	if s == "" {
		return nil, nil
	}
	var out []ferryv1.NodeState
	for _, name := range strings.Split(s, ",") {
		v, ok := ferryv1.NodeState_value["NODE_STATE_"+strings.ToUpper(strings.TrimSpace(name))]
		if !ok || v == 0 {
			return nil, fmt.Errorf("--state %q is not a node state: use healthy, stale, unreachable, suspect, down, left, removed or pending", name)
		}
		out = append(out, ferryv1.NodeState(v))
	}
	return out, nil
}

func (a *app) nodesCmd() *cobra.Command {
	var group, states string
	var watch bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List nodes with their health state (and why)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkOutput(); err != nil {
				return err
			}
			st, err := parseStates(states)
			if err != nil {
				return err
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			client := ferryv1.NewNodeServiceClient(conn)
			if watch {
				stream, err := client.WatchNodes(cmd.Context(), &ferryv1.WatchNodesRequest{Group: group, States: st})
				if err != nil {
					return err
				}
				for {
					m, err := stream.Recv()
					if err != nil {
						return err
					}
					if a.output == "json" {
						if err := a.printJSON(m.Node); err != nil {
							return err
						}
						continue
					}
					n := m.Node
					fmt.Fprintf(a.stdout, "%s  %-10s %-12s %s\n", time.Now().Format("15:04:05"), n.Id, metrics.StateName(n.State), n.StateReason)
				}
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			resp, err := client.ListNodes(ctx, &ferryv1.ListNodesRequest{Group: group, States: st})
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			return a.printNodes(resp.Nodes)
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only nodes of this group")
	cmd.Flags().StringVar(&states, "state", "", "only nodes in these states (comma separated)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "watch for changes")
	return cmd
}

func (a *app) printNodes(nodes []*ferryv1.Node) error {
	w := a.table()
	fmt.Fprintln(w, "NODE\tGROUP\tSTATE\tHEARTBEAT\tVERSION\tADDRESS\tREASON")
	now := time.Now()
	for _, n := range nodes {
		hb := "-"
		if n.LastHeartbeat != nil {
			hb = age(now.Sub(n.LastHeartbeat.AsTime())) + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Id, n.Group, metrics.StateName(n.State), hb, orDash(n.AgentVersion), orDash(n.Address), n.StateReason)
	}
	return w.Flush()
}

func (a *app) nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Act on one node"}
	cmd.AddCommand(&cobra.Command{
		Use:   "remove ID",
		Short: "Revoke a node: its stream is closed and its certificate refused",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			if _, err := ferryv1.NewNodeServiceClient(conn).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "node %s removed; it can no longer connect\n", args[0])
			return nil
		},
	})
	return cmd
}
