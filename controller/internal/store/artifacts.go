package store

import (
	"sort"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// bucketArtifacts holds artifact metadata keyed "name@version". Several
// records may share one blob (the same digest).
var bucketArtifacts = []byte("artifacts")

const artifactRecord = "artifact record"

// Artifact returns the record stored under "name@version"; ErrNotFound
// when there is none.
func (s *Store) Artifact(key string) (*ferryv1.Artifact, error) {
	var a *ferryv1.Artifact
	err := s.kv.View(func(tx kvTx) (err error) {
		a, err = get[ferryv1.Artifact](tx.Bucket(bucketArtifacts), artifactRecord, key)
		return err
	})
	return a, err
}

// Artifacts returns every artifact record, in key order.
func (s *Store) Artifacts() ([]*ferryv1.Artifact, error) {
	var out []*ferryv1.Artifact
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = list[ferryv1.Artifact](tx.Bucket(bucketArtifacts), artifactRecord)
		return err
	})
	return out, err
}

// PutArtifact writes a's record under its name@version, with the push's
// audit entry (audit.go).
func (s *Store) PutArtifact(a *ferryv1.Artifact, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return put(tx.Bucket(bucketArtifacts), artifactRecord, VersionKey(a.GetName(), a.GetVersion()), a)
	})
}

// UpdateArtifacts applies update to every record whose digest is digest
// (the records sharing one blob) and writes the audit entry ev (nil: none;
// audit.go), in one transaction, and returns the records as written, in
// key order.
func (s *Store) UpdateArtifacts(digest string, update func(*ferryv1.Artifact), ev *ferryv1.AuditEvent) ([]*ferryv1.Artifact, error) {
	var out []*ferryv1.Artifact
	err := s.audited(ev, func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		b := tx.Bucket(bucketArtifacts)
		all, err := list[ferryv1.Artifact](b, artifactRecord)
		if err != nil {
			return err
		}
		for _, a := range all {
			if a.GetDigest() != digest {
				continue
			}
			update(a)
			if err := put(b, artifactRecord, VersionKey(a.GetName(), a.GetVersion()), a); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// DeleteArtifact removes the record under "name@version" unless a package
// uses its digest: then it removes nothing and returns those packages
// ("name@version", sorted). The check, the removal and the audit entry
// ev (audit.go) are one transaction. ErrNotFound when there is no such
// record.
func (s *Store) DeleteArtifact(key string, ev *ferryv1.AuditEvent) (usedBy []string, err error) {
	err = s.audited(ev, func(tx kvTx) error {
		b := tx.Bucket(bucketArtifacts)
		a, err := get[ferryv1.Artifact](b, artifactRecord, key)
		if err != nil {
			return err
		}
		if usedBy, err = packagesUsing(tx, a.GetDigest()); err != nil {
			return err
		}
		if len(usedBy) > 0 {
			return errNoChange
		}
		return b.Delete([]byte(key))
	})
	return usedBy, err
}

// PackagesUsing lists the packages ("name@version", sorted) whose
// artifact has digest.
func (s *Store) PackagesUsing(digest string) ([]string, error) {
	var out []string
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = packagesUsing(tx, digest)
		return err
	})
	return out, err
}

func packagesUsing(tx kvTx, digest string) ([]string, error) {
	var out []string
	err := forEach(tx.Bucket(bucketPackages), packageRecord, func(k string, p *ferryv1.Package) error {
		if p.GetArtifact().GetDigest() == digest {
			out = append(out, k)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}
