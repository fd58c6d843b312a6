package server

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/packages"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// packageServer is the PackageService, on the package store.
type packageServer struct {
	ferryv1.UnimplementedPackageServiceServer
	d *Deps
}

func (s *packageServer) ApplyPackage(ctx context.Context, req *ferryv1.ApplyPackageRequest) (*ferryv1.ApplyPackageResponse, error) {
	name := req.GetFilename()
	if name == "" {
		name = "package.yaml"
	}
	ev := s.d.auditEvent(ctx, "package.apply", name, "created=true")
	pkg, created, err := s.d.Packages.Apply(name, []byte(req.GetYaml()), rpc.CallerName(ctx), func(p *ferryv1.Package) *ferryv1.AuditEvent {
		ev.Target = p.Name + "@" + p.Version
		return ev
	})
	if err != nil {
		ev.Detail = "created=false"
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	if !created {
		ev.Detail = "created=false"
		if err := s.d.unchanged(ev); err != nil {
			return nil, toStatus(err)
		}
	}
	return &ferryv1.ApplyPackageResponse{Package: pkg, Created: created}, nil
}

func (s *packageServer) ListPackages(ctx context.Context, req *ferryv1.ListPackagesRequest) (*ferryv1.ListPackagesResponse, error) {
	ps, err := s.d.Packages.Packages(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ListPackagesResponse{Packages: ps}, nil
}

func (s *packageServer) GetPackage(ctx context.Context, req *ferryv1.GetPackageRequest) (*ferryv1.GetPackageResponse, error) {
	p, err := s.d.Packages.Package(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GetPackageResponse{Package: p}, nil
}

// DeletePackage removes a package version, refusing while a node has it
// installed or a rollout that has not ended uses it, naming them and the
// way out.
func (s *packageServer) DeletePackage(ctx context.Context, req *ferryv1.DeletePackageRequest) (*ferryv1.DeletePackageResponse, error) {
	name, version := strings.TrimSpace(req.GetName()), strings.TrimSpace(req.GetVersion())
	ref := name + "@" + version
	ev := s.d.auditEvent(ctx, "package.rm", ref, "")
	if name == "" || version == "" {
		err := status.Error(codes.InvalidArgument, "name the package version to remove as NAME@VERSION, e.g. go@1.20.3")
		s.d.refused(ev, err)
		return nil, err
	}
	inUse := func() error {
		// Only the engine that runs the rollouts knows them all (several
		// controllers: the leader, where this call is forwarded).
		if err := s.d.Rollouts.Leading(); err != nil {
			return err
		}
		rollouts, nodes := s.d.Rollouts.PackageUsers(name, version)
		var why []string
		if len(nodes) > 0 {
			why = append(why, fmt.Sprintf("installed on node %s (remove it with `ferryctl rollout --remove %s --group G`, or move the nodes to another version)", listSome(nodes), name))
		}
		if len(rollouts) > 0 {
			why = append(why, fmt.Sprintf("used by rollout %s (wait for it to end or abort it with `ferryctl rollout abort %s`)", listSome(rollouts), rollouts[0]))
		}
		if len(why) == 0 {
			return nil
		}
		return fmt.Errorf("%w: package %s is %s", packages.ErrInUse, ref, strings.Join(why, "; and "))
	}
	p, err := s.d.Packages.Delete(name, version, inUse, ev)
	if err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	return &ferryv1.DeletePackageResponse{Package: p}, nil
}

// listSome names up to five things, then how many more.
func listSome(ids []string) string {
	if len(ids) > 5 {
		return fmt.Sprintf("%s and %d more", strings.Join(ids[:5], ", "), len(ids)-5)
	}
	return strings.Join(ids, ", ")
}
