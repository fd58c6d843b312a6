package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/pkgspec"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// splitRef splits "name@version".
func splitRef(ref string) (string, string, error) {
	name, version, ok := strings.Cut(ref, "@")
	if !ok || name == "" || version == "" {
		return "", "", fmt.Errorf("%q is not a package reference: want NAME@VERSION, e.g. go@1.20.3", ref)
	}
	return name, version, nil
}

func (a *app) packageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "package", Aliases: []string{"packages", "pkg"}, Short: "Manage packages (install recipes)"}
	var file string
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Validate a package file, resolve its artifact and store it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f FILE is required")
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			// The controller checks the same; here it is checked before a
			// 10 MB file meets gRPC's message limit, or invalid UTF-8
			// protobuf's string check, neither of which names the file.
			if err := pkgspec.CheckFile(filepath.Base(file), data); err != nil {
				return err
			}
			resp, err := call(a, cmd, ferryv1.NewPackageServiceClient, ferryv1.PackageServiceClient.ApplyPackage,
				&ferryv1.ApplyPackageRequest{Yaml: string(data), Filename: filepath.Base(file)})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				p := resp.Package
				verb := "created"
				if !resp.Created {
					verb = "unchanged (identical content already stored)"
				}
				fmt.Fprintf(a.stdout, "package %s@%s %s; artifact %s (%s), %d steps\n", p.Name, p.Version, verb, p.GetArtifact().GetName(), shortDigest(p.GetArtifact().GetDigest()), len(p.Steps))
				return nil
			})
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "package YAML file")

	var name string
	list := &cobra.Command{
		Use:   "list",
		Short: "List package versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewPackageServiceClient, ferryv1.PackageServiceClient.ListPackages, &ferryv1.ListPackagesRequest{Name: name})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				return printTable(a, []string{"PACKAGE", "ARTIFACT", "DIGEST", "STEPS", "CREATED", "BY"}, resp.Packages, func(p *ferryv1.Package) []string {
					return []string{p.Name + "@" + p.Version, orDash(p.GetArtifact().GetName()), shortDigest(p.GetArtifact().GetDigest()),
						strconv.Itoa(len(p.Steps)), p.CreatedAt.AsTime().Local().Format(time.RFC3339), p.CreatedBy}
				})
			})
		},
	}
	list.Flags().StringVar(&name, "name", "", "only this package")

	show := &cobra.Command{
		Use:   "show NAME@VERSION",
		Short: "Show a package version as stored",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, v, err := splitRef(args[0])
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, ferryv1.NewPackageServiceClient, ferryv1.PackageServiceClient.GetPackage, &ferryv1.GetPackageRequest{Name: n, Version: v})
			if err != nil {
				return err
			}
			p := resp.Package
			return a.show(p, func() error {
				fmt.Fprintf(a.stdout, "Package:   %s@%s\nArtifact:  %s %s (%d bytes)\nContent:   %s\nCreated:   %s by %s\n\n%s",
					p.Name, p.Version, orDash(p.GetArtifact().GetName()), p.GetArtifact().GetDigest(), p.GetArtifact().GetSize(), p.ContentDigest,
					p.CreatedAt.AsTime().Local().Format(time.RFC3339), p.CreatedBy, p.Source)
				return nil
			})
		},
	}
	cmd.AddCommand(apply, list, show, a.packageRmCmd())
	return cmd
}

// shortDigest abbreviates "sha256:<hex>" to 12 hex digits ("-" when empty).
func shortDigest(d string) string { return orDash(sha256digest.Short(d)) }
