package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/nodestate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
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
	var watch, disks bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List nodes with their health state (and why)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := parseStates(states)
			if err != nil {
				return err
			}
			if watch {
				return a.watchNodes(cmd, &ferryv1.WatchNodesRequest{Group: group, States: st})
			}
			resp, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.ListNodes, &ferryv1.ListNodesRequest{Group: group, States: st})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				if disks {
					return a.printDisks(resp.Nodes)
				}
				return a.printNodes(resp.Nodes)
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only nodes of this group")
	cmd.Flags().StringVar(&states, "state", "", "only nodes in these states (comma separated)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "watch for changes")
	cmd.Flags().BoolVar(&disks, "disk", false, "list the free space of each file system the nodes' agents write to (state dir, install root, archive destinations)")
	return cmd
}

// watchNodes prints each change to a node until the stream ends (without
// --timeout: a watch lasts until interrupted).
func (a *app) watchNodes(cmd *cobra.Command, req *ferryv1.WatchNodesRequest) error {
	conn, err := a.connect()
	if err != nil {
		return err
	}
	stream, err := ferryv1.NewNodeServiceClient(conn).WatchNodes(cmd.Context(), req)
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
		fmt.Fprintf(a.stdout, "%s  %-10s %-12s %s\n", time.Now().Format("15:04:05"), n.Id, nodestate.Name(n.State), n.StateReason)
	}
}

func (a *app) printNodes(nodes []*ferryv1.Node) error {
	now := time.Now()
	return printTable(a, []string{"NODE", "GROUP", "STATE", "HEARTBEAT", "VERSION", "ADDRESS", "REASON"}, nodes, func(n *ferryv1.Node) []string {
		hb := "-"
		if n.LastHeartbeat != nil {
			hb = age(now.Sub(n.LastHeartbeat.AsTime())) + " ago"
		}
		return []string{n.Id, n.Group, nodestate.Name(n.State), hb, orDash(n.AgentVersion), orDash(n.Address), n.StateReason}
	})
}

// printDisks lists each node's file systems, one row each, with what the
// agent keeps there; a node whose agent reports only the install root's
// free space gets that row.
func (a *app) printDisks(nodes []*ferryv1.Node) error {
	type row struct {
		node string
		disk *ferryv1.DiskSpace
	}
	var rows []row
	for _, n := range nodes {
		for _, d := range n.Disks {
			rows = append(rows, row{n.Id, d})
		}
		if len(n.Disks) == 0 && n.DiskFreeBytes > 0 {
			rows = append(rows, row{n.Id, &ferryv1.DiskSpace{Uses: []string{"install root"}, FreeBytes: n.DiskFreeBytes}})
		}
	}
	return printTable(a, []string{"NODE", "FREE", "SIZE", "PATH", "HOLDS"}, rows, func(r row) []string {
		size := "-"
		if r.disk.TotalBytes > 0 {
			size = bytesize.IEC(r.disk.TotalBytes)
		}
		return []string{r.node, bytesize.IEC(r.disk.FreeBytes), size, orDash(r.disk.Path), strings.Join(r.disk.Uses, ", ")}
	})
}

func (a *app) nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Act on one node"}
	cmd.AddCommand(&cobra.Command{
		Use:   "remove ID",
		Short: "Revoke a node: its stream is closed and its certificate refused",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.RemoveNode, &ferryv1.RemoveNodeRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "node %s removed; it can no longer connect\n", args[0])
			return nil
		},
	})
	return cmd
}
