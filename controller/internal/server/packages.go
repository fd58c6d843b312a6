package server

import (
	"context"

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
