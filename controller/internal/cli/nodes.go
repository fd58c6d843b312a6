package cli

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/nodestate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/labels"
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
	var watch, disks, all, showLabels bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List nodes with their health state (and why)",
		Long: `List nodes with their health state and why. Removed nodes are left out
unless --all (or --state removed) is given. Large fleets are fetched a page
at a time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := parseStates(states)
			if err != nil {
				return err
			}
			if watch {
				return a.watchNodes(cmd, &ferryv1.WatchNodesRequest{Group: group, States: st, HideRemoved: !all})
			}
			resp, err := a.listNodes(cmd, &ferryv1.ListNodesRequest{Group: group, States: st, HideRemoved: !all})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				if disks {
					return a.printDisks(resp.Nodes)
				}
				return a.printNodes(resp.Nodes, showLabels)
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only nodes of this group")
	cmd.Flags().StringVar(&states, "state", "", "only nodes in these states (comma separated)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "watch for changes")
	cmd.Flags().BoolVar(&disks, "disk", false, "list the free space of each file system the nodes' agents write to (state dir, install root, archive destinations)")
	cmd.Flags().BoolVar(&all, "all", false, "include removed nodes")
	cmd.Flags().BoolVar(&showLabels, "show-labels", false, "add a LABELS column (the labels rollout selectors match)")
	return cmd
}

// listNodes fetches every page of a listing, each page one call within
// --timeout, and returns them as one response.
func (a *app) listNodes(cmd *cobra.Command, req *ferryv1.ListNodesRequest) (*ferryv1.ListNodesResponse, error) {
	all := &ferryv1.ListNodesResponse{}
	for {
		resp, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.ListNodes, req)
		if err != nil {
			return nil, err
		}
		all.Nodes = append(all.Nodes, resp.Nodes...)
		if resp.NextPageToken == "" {
			return all, nil
		}
		if resp.NextPageToken == req.PageToken {
			return nil, fmt.Errorf("the controller returned page token %q twice; list again", resp.NextPageToken)
		}
		req = proto.CloneOf(req)
		req.PageToken = resp.NextPageToken
	}
}

// watchNodes prints each change to a node until interrupted (without
// --timeout: a watch lasts until interrupted), reconnecting when the
// controller restarts; the controller then sends every node's state again.
func (a *app) watchNodes(cmd *cobra.Command, req *ferryv1.WatchNodesRequest) error {
	conn, err := a.connect()
	if err != nil {
		return err
	}
	client := ferryv1.NewNodeServiceClient(conn)
	open := func(ctx context.Context, opts ...grpc.CallOption) (grpc.ServerStreamingClient[ferryv1.WatchNodesResponse], error) {
		return client.WatchNodes(ctx, req, opts...)
	}
	return watch(a, cmd.Context(), open, func(m *ferryv1.WatchNodesResponse) error {
		ev := m.GetEvent()
		if a.machine() {
			return a.emit(ev)
		}
		state, reason := nodestate.Name(ev.GetState()), ev.GetStateReason()
		if ev.GetPurged() {
			state, reason = "purged", "its record was deleted"
		}
		_, err := fmt.Fprintf(a.stdout, "%s  %-10s %-12s %s\n", time.Now().Format("15:04:05"), ev.GetId(), state, reason)
		return err
	})
}

func (a *app) printNodes(nodes []*ferryv1.Node, showLabels bool) error {
	now := time.Now()
	header := []string{"NODE", "GROUP", "STATE", "HEARTBEAT", "VERSION", "ADDRESS", "REASON"}
	if showLabels {
		header = append(header, "LABELS")
	}
	return printTable(a, header, nodes, func(n *ferryv1.Node) []string {
		hb := "-"
		if n.LastHeartbeat != nil {
			hb = age(now.Sub(n.LastHeartbeat.AsTime())) + " ago"
		}
		row := []string{n.Id, n.Group, nodestate.Name(n.State), hb, orDash(n.AgentVersion), orDash(n.Address), n.StateReason}
		if showLabels {
			l := maps.Clone(n.Labels)
			delete(l, labels.Reserved) // the GROUP column
			row = append(row, orDash(labels.Format(l)))
		}
		return row
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
	var purge bool
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Revoke a node: its stream is closed and its certificate refused",
		Long: `Revoke a node: its stream is closed and its certificate refused. The
record stays (ferryctl nodes --all lists it) unless --purge deletes it; a
removed node can be purged later the same way.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.RemoveNode, &ferryv1.RemoveNodeRequest{Id: args[0], Purge: purge}); err != nil {
				return err
			}
			if purge {
				fmt.Fprintf(a.stdout, "node %s removed and purged; its record is deleted\n", args[0])
				return nil
			}
			fmt.Fprintf(a.stdout, "node %s removed; it can no longer connect\n", args[0])
			return nil
		},
	}
	remove.Flags().BoolVar(&purge, "purge", false, "also delete the node's record")
	label := &cobra.Command{
		Use:   "label ID KEY=VALUE... KEY-...",
		Short: "Set (KEY=VALUE) and remove (KEY-) a node's labels, the ones rollout selectors match",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, remove, err := labels.ParseChanges(args[1:])
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.LabelNode, &ferryv1.LabelNodeRequest{Id: args[0], Set: set, Remove: remove})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				l := maps.Clone(resp.Node.GetLabels())
				delete(l, labels.Reserved)
				fmt.Fprintf(a.stdout, "node %s labeled: %s\n", args[0], orDash(labels.Format(l)))
				return nil
			})
		},
	}
	var group string
	move := &cobra.Command{
		Use:   "move ID --group GROUP",
		Short: "Put a node in another group",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if group == "" {
				return fmt.Errorf("--group is required: the group to move node %s to", args[0])
			}
			resp, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.MoveNode, &ferryv1.MoveNodeRequest{Id: args[0], Group: group})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				fmt.Fprintf(a.stdout, "node %s moved to group %s\n", args[0], resp.Node.GetGroup())
				return nil
			})
		},
	}
	move.Flags().StringVar(&group, "group", "", "the new group (required)")
	cmd.AddCommand(remove, label, move)
	return cmd
}
