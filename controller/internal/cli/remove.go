package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// packageRmCmd is `ferryctl package rm NAME@VERSION`.
func (a *app) packageRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME@VERSION",
		Short: "Remove a stored package version no node has and no rollout uses",
		Long: `Remove a stored package version. It is refused while a node has the version
installed or a rollout that has not ended uses it; the refusal names them
and says what to do (remove the package from the nodes with
'ferryctl rollout --remove NAME --group G', move them to another version, or
wait for or abort the rollout). Its artifact can then be removed with
'ferryctl artifact rm' or 'ferryctl artifact gc'. Rollout history keeps
naming the version.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, v, err := splitRef(args[0])
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, ferryv1.NewPackageServiceClient, ferryv1.PackageServiceClient.DeletePackage, &ferryv1.DeletePackageRequest{Name: n, Version: v})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				p := resp.Package
				fmt.Fprintf(a.stdout, "package %s@%s removed", p.Name, p.Version)
				if p.GetArtifact().GetName() != "" {
					fmt.Fprintf(a.stdout, "; its artifact %s stays until `ferryctl artifact gc` or `ferryctl artifact rm`", p.GetArtifact().GetName())
				}
				fmt.Fprintln(a.stdout)
				return nil
			})
		},
	}
}

// artifactGcCmd is `ferryctl artifact gc [--plan]`.
func (a *app) artifactGcCmd() *cobra.Command {
	var plan bool
	cmd := &cobra.Command{
		Use:   "gc [--plan]",
		Short: "Remove every artifact nothing references",
		Long: `Remove every artifact that no stored package references and no rollout may
still send to a node (one that has not ended, or whose jobs ended in the
last few minutes). An artifact pushed but not yet used by a package counts
as unreferenced. Each removal is written to the audit log. --plan lists
what would be removed and changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.CollectArtifacts, &ferryv1.CollectArtifactsRequest{Plan: plan})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				verb := "removed"
				if plan {
					verb = "would remove"
				}
				for _, art := range resp.Removed {
					fmt.Fprintf(a.stdout, "%s %s (%s, %d bytes)\n", verb, pushclient.Key(art), shortDigest(art.Digest), art.Size)
				}
				switch {
				case len(resp.Removed) == 0:
					fmt.Fprintln(a.stdout, "nothing to remove: every artifact is referenced by a package or a rollout")
				case plan:
					fmt.Fprintf(a.stdout, "\nplan only: %d artifacts (%d bytes) would be removed; nothing was changed\n", len(resp.Removed), resp.Bytes)
				default:
					fmt.Fprintf(a.stdout, "%d artifacts removed, %d bytes freed\n", len(resp.Removed), resp.Bytes)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&plan, "plan", false, "list what would be removed; change nothing")
	return cmd
}
