package store

import (
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// bucketMirrors holds the site-local artifact mirror of each group, keyed
// by group.
var bucketMirrors = []byte("mirrors")

const mirrorRecord = "mirror record"

// Mirror returns the mirror of group; ErrNotFound when it has none.
func (s *Store) Mirror(group string) (*ferryv1.Mirror, error) {
	var m *ferryv1.Mirror
	err := s.kv.View(func(tx kvTx) (err error) {
		m, err = get[ferryv1.Mirror](tx.Bucket(bucketMirrors), mirrorRecord, group)
		return err
	})
	return m, err
}

// Mirrors returns every group's mirror, by group.
func (s *Store) Mirrors() ([]*ferryv1.Mirror, error) {
	var out []*ferryv1.Mirror
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = list[ferryv1.Mirror](tx.Bucket(bucketMirrors), mirrorRecord)
		return err
	})
	return out, err
}

// PutMirror sets m as its group's mirror, with the audit entry ev
// (audit.go).
func (s *Store) PutMirror(m *ferryv1.Mirror, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return put(tx.Bucket(bucketMirrors), mirrorRecord, m.GetGroup(), m)
	})
}

// DeleteMirror removes group's mirror and returns it, with the audit entry
// ev; ErrNotFound (and nothing written) when it has none.
func (s *Store) DeleteMirror(group string, ev *ferryv1.AuditEvent) (*ferryv1.Mirror, error) {
	var m *ferryv1.Mirror
	err := s.audited(ev, func(tx kvTx) (err error) {
		b := tx.Bucket(bucketMirrors)
		if m, err = get[ferryv1.Mirror](b, mirrorRecord, group); err != nil {
			return err
		}
		return b.Delete([]byte(group))
	})
	return m, err
}
