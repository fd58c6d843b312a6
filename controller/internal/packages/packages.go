// Package packages stores install recipes: immutable package versions
// parsed from YAML by pkgspec, with their artifact resolved to a digest.
// Package server serves it as the PackageService; the rollout engine reads
// it.
package packages

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/pkgspec"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrNotFound is returned for an unknown package version.
	ErrNotFound = errors.New("package not found")
	// ErrImmutable is returned when a version is applied again with other
	// content.
	ErrImmutable = errors.New("package versions are immutable")
	// ErrInUse is returned when a version to remove is installed on a
	// node or used by a rollout.
	ErrInUse = errors.New("package version is in use")
)

// Store is the package store.
type Store struct {
	db       *store.Store
	resolver pkgspec.ArtifactResolver
	now      func() time.Time
}

// New returns a package store keeping its records in db.
func New(db *store.Store, resolver pkgspec.ArtifactResolver, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	return &Store{db: db, resolver: resolver, now: now}, nil
}

// Apply validates and stores a package file. Identical content is a no-op;
// different content under an existing version is refused. audit, when
// set, returns the apply's audit entry for the new version; it is written
// in the transaction that stores it (a no-op or a refusal writes nothing).
func (s *Store) Apply(filename string, data []byte, actor string, audit func(*ferryv1.Package) *ferryv1.AuditEvent) (*ferryv1.Package, bool, error) {
	pkg, err := pkgspec.ParseAndResolve(filename, data, s.resolver)
	if err != nil {
		return nil, false, err
	}
	pkg.CreatedAt = timestamppb.New(s.now())
	pkg.CreatedBy = actor
	var ev *ferryv1.AuditEvent
	if audit != nil {
		ev = audit(pkg)
	}
	prev, err := s.db.AddPackage(pkg, ev)
	switch {
	case err != nil:
		return nil, false, err
	case prev == nil:
		return pkg, true, nil
	case prev.ContentDigest == pkg.ContentDigest:
		return prev, false, nil
	}
	return nil, false, fmt.Errorf("package %s@%s already exists with different content (applied by %s at %s); %w: give this content a new version", pkg.Name, pkg.Version, prev.CreatedBy, prev.CreatedAt.AsTime().UTC().Format(time.RFC3339), ErrImmutable)
}

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

// Delete removes a stored version, with the audit entry ev, after
// inUse (which names what still uses the version, or nil) found nothing.
// inUse runs before the record is removed; a version that is not stored
// is ErrNotFound.
func (s *Store) Delete(name, version string, inUse func() error, ev *ferryv1.AuditEvent) (*ferryv1.Package, error) {
	if _, err := s.Package(name, version); err != nil {
		return nil, err
	}
	if err := inUse(); err != nil {
		return nil, err
	}
	p, err := s.db.DeletePackage(name, version, ev)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s@%s; list packages with `ferryctl package list`", ErrNotFound, name, version)
	}
	return p, err
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
