package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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
	var group, states, selector string
	var watch, disks, all, showLabels bool
	var hasPkg, lacksPkg []string
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List nodes with their health state (and why)",
		Long: `List nodes with their health state and why. Removed nodes are left out
unless --all (or --state removed) is given. Large fleets are fetched a page
at a time.

--selector picks nodes by label as a rollout does; --package and
--not-package pick them by what they run (NAME for any version,
NAME@VERSION for one). -o wide adds the stream and gossip signals, the
platform and the installed packages; 'ferryctl node show ID' shows one
node in full.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := parseStates(states)
			if err != nil {
				return err
			}
			f, err := newNodeFilter(selector, hasPkg, lacksPkg)
			if err != nil {
				return err
			}
			if watch {
				if !f.empty() {
					return errors.New("--selector, --package and --not-package do not apply to --watch: watch a --group or --state")
				}
				return a.watchNodes(cmd, &ferryv1.WatchNodesRequest{Group: group, States: st, HideRemoved: !all})
			}
			resp, err := a.listNodes(cmd, &ferryv1.ListNodesRequest{Group: group, States: st, HideRemoved: !all})
			if err != nil {
				return err
			}
			resp.Nodes = slices.DeleteFunc(resp.Nodes, func(n *ferryv1.Node) bool { return !f.match(n) })
			return a.show(resp, func() error {
				if disks {
					return a.printDisks(resp.Nodes)
				}
				return a.printNodes(resp.Nodes, a.output == outWide)
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only nodes of this group")
	cmd.Flags().StringVar(&states, "state", "", "only nodes in these states (comma separated)")
	cmd.Flags().StringVar(&selector, "selector", "", "only nodes whose labels match key=value[,key=value] (all must match), as rollout --selector")
	cmd.Flags().StringArrayVar(&hasPkg, "package", nil, "only nodes that have this package installed: NAME (any version) or NAME@VERSION (repeatable)")
	cmd.Flags().StringArrayVar(&lacksPkg, "not-package", nil, "only nodes that do not have this package: NAME (no version) or NAME@VERSION (not that version) (repeatable)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "watch for changes (reconnects when the controller restarts)")
	cmd.Flags().BoolVar(&disks, "disk", false, "list the free space of each file system the nodes' agents write to (state dir, install root, archive destinations)")
	cmd.Flags().BoolVar(&all, "all", false, "include removed nodes")
	// --show-labels is kept for scripts written before LABELS was always shown.
	cmd.Flags().BoolVar(&showLabels, "show-labels", false, "no effect: the LABELS column is always shown")
	_ = cmd.Flags().MarkHidden("show-labels") // the flag exists
	return cmd
}

// nodeFilter is what `ferryctl nodes` picks by on the client: labels and
// installed packages.
type nodeFilter struct {
	selector   map[string]string
	has, lacks []pkgRef
}

// pkgRef is NAME or NAME@VERSION; an empty version matches any.
type pkgRef struct{ name, version string }

func newNodeFilter(selector string, has, lacks []string) (nodeFilter, error) {
	sel, err := parseSelector(selector)
	if err != nil {
		return nodeFilter{}, err
	}
	f := nodeFilter{selector: sel}
	for _, in := range []struct {
		flag string
		refs []string
		dst  *[]pkgRef
	}{{"--package", has, &f.has}, {"--not-package", lacks, &f.lacks}} {
		for _, r := range in.refs {
			name, version, at := strings.Cut(r, "@")
			if name == "" || (at && version == "") {
				return nodeFilter{}, fmt.Errorf("%s %q: want NAME or NAME@VERSION, e.g. go or go@1.20.3", in.flag, r)
			}
			*in.dst = append(*in.dst, pkgRef{name, version})
		}
	}
	return f, nil
}

func (f nodeFilter) empty() bool { return len(f.selector) == 0 && len(f.has) == 0 && len(f.lacks) == 0 }

func (f nodeFilter) match(n *ferryv1.Node) bool {
	for k, v := range f.selector {
		got, ok := n.Labels[k]
		if k == labels.Reserved {
			got, ok = n.Group, true
		}
		if !ok || got != v {
			return false
		}
	}
	for _, r := range f.has {
		if !r.installedOn(n) {
			return false
		}
	}
	for _, r := range f.lacks {
		if r.installedOn(n) {
			return false
		}
	}
	return true
}

func (r pkgRef) installedOn(n *ferryv1.Node) bool {
	return slices.ContainsFunc(n.Installed, func(p *ferryv1.InstalledPackage) bool {
		return p.Name == r.name && (r.version == "" || p.Version == r.version)
	})
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
	return watch(cmd.Context(), a, open, func(m *ferryv1.WatchNodesResponse) error {
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

// printNodes is the nodes table; wide adds the two health signals apart,
// the platform and the installed packages.
func (a *app) printNodes(nodes []*ferryv1.Node, wide bool) error {
	now := time.Now()
	header := []string{"NODE", "GROUP", "STATE", "HEARTBEAT", "VERSION", "ADDRESS", "LABELS", "REASON"}
	if wide {
		header = []string{"NODE", "GROUP", "STATE", "HEARTBEAT", "STREAM", "GOSSIP", "VERSION", "ADDRESS", "PLATFORM", "PACKAGES", "LABELS", "REASON"}
	}
	return printTable(a, header, nodes, func(n *ferryv1.Node) []string {
		hb := "-"
		if n.LastHeartbeat != nil {
			hb = age(now.Sub(n.LastHeartbeat.AsTime())) + " ago"
		}
		reason := n.StateReason
		if d := driftSummary(n.Drift); d != "" {
			reason += "; " + d
		}
		if !wide {
			return []string{n.Id, n.Group, nodestate.Name(n.State), hb, orDash(n.AgentVersion), orDash(n.Address), nodeLabels(n), reason}
		}
		platform := "-"
		if f := n.GetFacts(); f.GetOs() != "" {
			platform = f.GetOs() + "/" + f.GetArch()
		}
		return []string{n.Id, n.Group, nodestate.Name(n.State), hb, streamWord(n), orDash(n.GossipState), orDash(n.AgentVersion), orDash(n.Address),
			platform, orDash(installedList(n)), nodeLabels(n), reason}
	})
}

// nodeLabels is a node's labels but "group" (the GROUP column).
func nodeLabels(n *ferryv1.Node) string {
	l := maps.Clone(n.Labels)
	delete(l, labels.Reserved)
	return orDash(labels.Format(l))
}

func streamWord(n *ferryv1.Node) string {
	if n.Connected {
		return "connected"
	}
	return "disconnected"
}

// installedList is "go@1.20.3,node@20.1.0".
func installedList(n *ferryv1.Node) string {
	refs := make([]string, 0, len(n.Installed))
	for _, p := range n.Installed {
		refs = append(refs, p.Name+"@"+p.Version)
	}
	slices.Sort(refs)
	return strings.Join(refs, ",")
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
				fmt.Fprintf(a.stdout, "node %s labeled: %s\n", args[0], nodeLabels(resp.Node))
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
	cmd.AddCommand(remove, label, move, a.nodeShowCmd())
	return cmd
}
