package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/nodestate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

func (a *app) nodeShowCmd() *cobra.Command {
	var jobs uint32
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one node: group, labels, facts, health, installed packages, recent jobs and the last error",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, ferryv1.NewNodeServiceClient, ferryv1.NodeServiceClient.GetNode, &ferryv1.GetNodeRequest{Id: args[0], Jobs: jobs})
			if err != nil {
				return err
			}
			return a.show(resp, func() error { return a.printNode(resp, time.Now()) })
		},
	}
	cmd.Flags().Uint32Var(&jobs, "jobs", 10, "recent jobs to list (at most 100)")
	return cmd
}

// printNode is `ferryctl node show` as text: a header of fields, then the
// installed packages, the recent jobs and the last error.
func (a *app) printNode(resp *ferryv1.GetNodeResponse, now time.Time) error {
	n := resp.Node
	w := a.stdout
	when := func(t interface{ AsTime() time.Time }) string {
		at := t.AsTime()
		return at.Local().Format(time.RFC3339) + " (" + ago(now.Sub(at)) + ")"
	}
	fmt.Fprintf(w, "Node:         %s\n", n.Id)
	fmt.Fprintf(w, "Group:        %s\n", n.Group)
	fmt.Fprintf(w, "Labels:       %s\n", nodeLabels(n))
	fmt.Fprintf(w, "State:        %s: %s\n", nodestate.Name(n.State), orDash(n.StateReason))
	stream := streamWord(n)
	if n.Connected && n.Address != "" {
		stream += " from " + n.Address
	}
	if n.LastHeartbeat != nil {
		stream += ", last heartbeat " + ago(now.Sub(n.LastHeartbeat.AsTime()))
	}
	fmt.Fprintf(w, "Stream:       %s\n", stream)
	fmt.Fprintf(w, "Gossip:       %s\n", orDash(n.GossipState))
	agent := orDash(n.AgentVersion)
	if n.Uptime != nil {
		agent += fmt.Sprintf(", up %s, load %.2f", age(n.Uptime.AsDuration()), n.Load1)
	}
	fmt.Fprintf(w, "Agent:        %s\n", agent)
	fmt.Fprintf(w, "Facts:        %s\n", factsLine(n.Facts))
	if n.EnrolledAt != nil {
		fmt.Fprintf(w, "Enrolled:     %s\n", when(n.EnrolledAt))
	}
	if n.CertificateExpiresAt != nil {
		fmt.Fprintf(w, "Certificate:  expires %s\n", n.CertificateExpiresAt.AsTime().Local().Format(time.RFC3339))
	}
	for _, d := range n.Disks {
		fmt.Fprintf(w, "Disk:         %s free on %s (%s)\n", bytesize.IEC(d.FreeBytes), d.Path, strings.Join(d.Uses, ", "))
	}

	fmt.Fprintln(w, "\nInstalled:")
	if len(n.Installed) == 0 {
		fmt.Fprintln(w, "  nothing installed by Ferry")
	} else {
		pkgs := slices.Clone(n.Installed)
		slices.SortFunc(pkgs, func(x, y *ferryv1.InstalledPackage) int { return strings.Compare(x.Name, y.Name) })
		if err := printTable(a, []string{"  PACKAGE", "VERSION", "INSTALLED", "ROLLOUT", "REPLACED"}, pkgs, func(p *ferryv1.InstalledPackage) []string {
			at := "-"
			if p.InstalledAt != nil {
				at = p.InstalledAt.AsTime().Local().Format(time.RFC3339)
			}
			return []string{"  " + p.Name, p.Version, at, orDash(resp.InstalledBy[p.Name+"@"+p.Version]), orDash(p.PreviousVersion)}
		}); err != nil {
			return err
		}
	}

	fmt.Fprintln(w, "\nDrift:")
	for _, l := range driftLines(n.Drift) {
		fmt.Fprintln(w, "  "+l)
	}

	fmt.Fprintln(w, "\nRecent jobs:")
	if len(resp.Jobs) == 0 {
		fmt.Fprintln(w, "  none: no rollout kept has included this node")
	} else if err := printTable(a, []string{"  ROLLOUT", "PACKAGE", "KIND", "OUTCOME", "FINISHED", "DETAIL"}, resp.Jobs, func(j *ferryv1.NodeJobRecord) []string {
		fin := "-"
		if t := j.Job.GetFinishedAt(); t != nil {
			fin = ago(now.Sub(t.AsTime()))
		}
		return []string{"  " + j.RolloutId, j.PackageName + "@" + j.PackageVersion, jobKindWord(j.JobKind), enumword.Spaced(j.Job.GetOutcome()), fin, orDash(oneLine(jobDetail(j.Job)))}
	}); err != nil {
		return err
	}

	fmt.Fprint(w, "\nLast error:   ")
	printLastFailure(w, n.Id, resp.LastFailure)
	return nil
}

func printLastFailure(w io.Writer, node string, f *ferryv1.NodeJobRecord) {
	if f == nil {
		fmt.Fprintln(w, "none")
		return
	}
	at := ""
	if t := f.Job.GetFinishedAt(); t != nil {
		at = " at " + t.AsTime().Local().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "rollout %s (%s@%s)%s: %s\n              logs: ferryctl logs %s %s\n",
		f.RolloutId, f.PackageName, f.PackageVersion, at, oneLine(jobDetail(f.Job)), f.RolloutId, node)
}

// jobDetail is a job's message with the step that failed, once (the
// agent's message may already start with it).
func jobDetail(j *ferryv1.NodeJob) string {
	if step := j.GetFailedStep(); step != "" {
		return "step " + step + ": " + strings.TrimPrefix(j.GetMessage(), step+": ")
	}
	return j.GetMessage()
}

func jobKindWord(k ferryv1.JobKind) string {
	if k == ferryv1.JobKind_JOB_KIND_ROLLBACK {
		return "undo"
	}
	return enumword.Of(k)
}

// factsLine is "linux/amd64, host vm1, kernel 6.1.0, 2 CPUs, clock skew 3ms".
func factsLine(f *ferryv1.Facts) string {
	if f == nil {
		return "-"
	}
	var parts []string
	if f.Os != "" {
		parts = append(parts, f.Os+"/"+f.Arch)
	}
	if f.Hostname != "" {
		parts = append(parts, "host "+f.Hostname)
	}
	if f.Kernel != "" {
		parts = append(parts, "kernel "+f.Kernel)
	}
	if f.Cpus > 0 {
		parts = append(parts, fmt.Sprintf("%d CPUs", f.Cpus))
	}
	if f.ClockSkew != nil {
		parts = append(parts, "clock skew "+f.ClockSkew.AsDuration().Round(time.Millisecond).String())
	}
	return orDash(strings.Join(parts, ", "))
}

// ago is "5s ago", "3m ago".
func ago(d time.Duration) string { return age(d) + " ago" }
