package store

import (
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// bucketPackages holds package versions keyed "name@version".
var bucketPackages = []byte("packages")

const packageRecord = "package"

// Package returns one package version; ErrNotFound when absent.
func (s *Store) Package(name, version string) (*ferryv1.Package, error) {
	var p *ferryv1.Package
	err := s.kv.View(func(tx kvTx) (err error) {
		p, err = get[ferryv1.Package](tx.Bucket(bucketPackages), packageRecord, VersionKey(name, version))
		return err
	})
	return p, err
}

// Packages returns the versions of the package called name, or every
// package for "", in key order.
func (s *Store) Packages(name string) ([]*ferryv1.Package, error) {
	var out []*ferryv1.Package
	err := s.kv.View(func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		return forEach(tx.Bucket(bucketPackages), packageRecord, func(k string, p *ferryv1.Package) error {
			if name == "" || strings.HasPrefix(k, name+"@") {
				out = append(out, p)
			}
			return nil
		})
	})
	return out, err
}

// AddPackage stores p under its name@version, with the apply's audit entry
// ev (audit.go), unless that version exists: then it stores nothing, not
// ev either, and returns the existing record (versions are immutable; the
// caller tells an identical re-apply from a conflict and records it).
func (s *Store) AddPackage(p *ferryv1.Package, ev *ferryv1.AuditEvent) (existing *ferryv1.Package, err error) {
	err = s.audited(ev, func(tx kvTx) error {
		b := tx.Bucket(bucketPackages)
		key := VersionKey(p.GetName(), p.GetVersion())
		if b.Get([]byte(key)) != nil {
			if existing, err = get[ferryv1.Package](b, packageRecord, key); err != nil {
				return err
			}
			return errNoChange
		}
		return put(b, packageRecord, key, p)
	})
	return existing, err
}

// DeletePackage removes a package version with its audit entry ev, in
// one transaction; ErrNotFound when it is not stored (then ev is not
// written). It returns the removed record.
func (s *Store) DeletePackage(name, version string, ev *ferryv1.AuditEvent) (*ferryv1.Package, error) {
	var p *ferryv1.Package
	err := s.audited(ev, func(tx kvTx) (err error) {
		b := tx.Bucket(bucketPackages)
		key := VersionKey(name, version)
		if p, err = get[ferryv1.Package](b, packageRecord, key); err != nil {
			return err
		}
		return b.Delete([]byte(key))
	})
	return p, err
}
