package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/mirror"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func (a *app) mirrorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mirror",
		Short: "Site-local artifact mirrors: agents of a group fetch from their mirror first, then from the controller",
		Long: `Site-local artifact mirrors, one per group.

Agents of a group with a mirror fetch a job's artifact from the mirror
first, check the whole file against the artifact's digest, and fall back to
the controller when the mirror is down, slow, answers with an error or
serves other bytes (logged in the job's log). So a slow WAN link to a site
carries each artifact once, into the mirror, not once per node.

Layouts (--layout):
  name     <prefix>/<artifact name>, e.g. <prefix>/go1.20.3.linux-amd64.tar.gz
  sha256   <prefix>/sha256/<hex digest>, as the controller stores its blobs`,
	}
	cmd.AddCommand(a.mirrorSetCmd(), a.mirrorListCmd(), a.mirrorRmCmd())
	return cmd
}

func (a *app) mirrorSetCmd() *cobra.Command {
	var group, layout, caFile string
	cmd := &cobra.Command{
		Use:     "set --group GROUP URL-PREFIX [--layout name|sha256] [--ca-bundle FILE]",
		Short:   "Set a group's mirror",
		Example: `  ferryctl mirror set --group sh1 https://mirror.sh1.internal/ferry --ca-bundle sh1-ca.pem`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if group == "" {
				return errors.New("name the group whose agents use the mirror with --group")
			}
			l, err := mirror.ParseLayout(layout)
			if err != nil {
				return err
			}
			m := &ferryv1.Mirror{Group: group, UrlPrefix: args[0], Layout: l}
			if caFile != "" {
				if m.CaBundle, err = readCABundle(caFile); err != nil {
					return err
				}
			}
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.SetMirror, &ferryv1.SetMirrorRequest{Mirror: m})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				m := resp.Mirror
				verb := "set"
				if !resp.Changed {
					verb = "unchanged"
				}
				fmt.Fprintf(a.stdout, "mirror of group %s %s: %s (layout %s, e.g. %s); its agents fetch from it first, then from the controller\n",
					m.Group, verb, m.UrlPrefix, mirror.LayoutName(m.Layout), mirror.URL(m, &ferryv1.ArtifactRef{Name: "go1.20.3.linux-amd64.tar.gz", Digest: "sha256:<hex>"}))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "the group whose agents use the mirror (required)")
	cmd.Flags().StringVar(&layout, "layout", "name", "how the mirror names artifacts: name or sha256")
	cmd.Flags().StringVar(&caFile, "ca-bundle", "", "PEM file with the CA certificates agents verify an https mirror with (default: the nodes' system roots)")
	return cmd
}

func (a *app) mirrorListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the mirrors, by group",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.ListMirrors, &ferryv1.ListMirrorsRequest{})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				now := time.Now()
				return printTable(a, []string{"GROUP", "URL PREFIX", "LAYOUT", "CA", "SET", "BY"}, resp.Mirrors, func(m *ferryv1.Mirror) []string {
					ca := "system"
					if len(m.CaBundle) > 0 {
						ca = "bundle"
					}
					return []string{m.Group, m.UrlPrefix, mirror.LayoutName(m.Layout), ca, age(now.Sub(m.SetAt.AsTime())) + " ago", orDash(m.SetBy)}
				})
			})
		},
	}
}

func (a *app) mirrorRmCmd() *cobra.Command {
	var group string
	cmd := &cobra.Command{
		Use:   "rm --group GROUP",
		Short: "Remove a group's mirror; its agents fetch from the controller alone",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group == "" {
				return errors.New("name the group whose mirror to remove with --group")
			}
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.DeleteMirror, &ferryv1.DeleteMirrorRequest{Group: group})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				fmt.Fprintf(a.stdout, "mirror of group %s removed (%s)\n", resp.Mirror.Group, resp.Mirror.UrlPrefix)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "the group (required)")
	return cmd
}
