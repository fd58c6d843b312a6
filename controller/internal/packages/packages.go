// Package packages stores install recipes: immutable package versions
// parsed from YAML by pkgspec, with their artifact resolved to a digest.
// It serves the PackageService API and gives the rollout engine read access.
package packages

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/pkgspec"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// ErrNotFound is returned for an unknown package version.
var ErrNotFound = errors.New("package not found")

// Auditor records admin actions.
type Auditor func(ctx context.Context, action, target string, err error, detail string)

// Store is the package store and PackageService implementation.
type Store struct {
	ferryv1.UnimplementedPackageServiceServer
	db       *store.Store
	resolver pkgspec.ArtifactResolver
	audit    Auditor
	now      func() time.Time
}

// New returns a package store keeping its records in db.
func New(db *store.Store, resolver pkgspec.ArtifactResolver, audit Auditor, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	return &Store{db: db, resolver: resolver, audit: audit, now: now}, nil
}

func key(name, version string) string { return store.VersionKey(name, version) }

// Apply validates and stores a package file. Identical content is a no-op;
// different content under an existing version is refused.
func (s *Store) Apply(filename string, data []byte, actor string) (*ferryv1.Package, bool, error) {
	pkg, err := pkgspec.ParseAndResolve(filename, data, s.resolver)
	if err != nil {
		return nil, false, err
	}
	pkg.CreatedAt = timestamppb.New(s.now())
	pkg.CreatedBy = actor
	prev, err := s.db.AddPackage(pkg)
	switch {
	case err != nil:
		return nil, false, err
	case prev == nil:
		return pkg, true, nil
	case prev.ContentDigest == pkg.ContentDigest:
		return prev, false, nil
	}
	return nil, false, fmt.Errorf("%w: package %s@%s already exists with different content (applied by %s at %s); package versions are immutable: give this content a new version", errImmutable, pkg.Name, pkg.Version, prev.CreatedBy, prev.CreatedAt.AsTime().UTC().Format(time.RFC3339))
}

var errImmutable = errors.New("immutable")

// Package returns one version (rollout.Packages).
func (s *Store) Package(name, version string) (*ferryv1.Package, error) {
	p, err := s.db.Package(name, version)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s@%s; list packages with `ferryctl package list`", ErrNotFound, name, version)
		}
		return nil, err
	}
	return p, nil
}

// Packages lists versions of a package, or all packages for name "",
// sorted by name then creation time.
func (s *Store) Packages(name string) ([]*ferryv1.Package, error) {
	out, err := s.db.Packages(name)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].CreatedAt.AsTime().Before(out[j].CreatedAt.AsTime())
	})
	return out, err
}

// ApplyPackage implements PackageService.
func (s *Store) ApplyPackage(ctx context.Context, req *ferryv1.ApplyPackageRequest) (*ferryv1.ApplyPackageResponse, error) {
	name := req.GetFilename()
	if name == "" {
		name = "package.yaml"
	}
	pkg, created, err := s.Apply(name, []byte(req.GetYaml()), rpc.CallerName(ctx))
	target := name
	if pkg != nil {
		target = key(pkg.Name, pkg.Version)
	}
	if s.audit != nil {
		s.audit(ctx, "package.apply", target, err, fmt.Sprintf("created=%v", created))
	}
	if err != nil {
		if errors.Is(err, errImmutable) {
			return nil, status.Error(codes.AlreadyExists, strings.TrimPrefix(err.Error(), errImmutable.Error()+": "))
		}
		var list pkgspec.ErrorList
		var fe *pkgspec.FieldError
		if errors.As(err, &list) || errors.As(err, &fe) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &ferryv1.ApplyPackageResponse{Package: pkg, Created: created}, nil
}

// ListPackages implements PackageService.
func (s *Store) ListPackages(ctx context.Context, req *ferryv1.ListPackagesRequest) (*ferryv1.ListPackagesResponse, error) {
	ps, err := s.Packages(req.GetName())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &ferryv1.ListPackagesResponse{Packages: ps}, nil
}

// GetPackage implements PackageService.
func (s *Store) GetPackage(ctx context.Context, req *ferryv1.GetPackageRequest) (*ferryv1.GetPackageResponse, error) {
	p, err := s.Package(req.GetName(), req.GetVersion())
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &ferryv1.GetPackageResponse{Package: p}, nil
}
