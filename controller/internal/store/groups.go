package store

import (
	bolt "go.etcd.io/bbolt"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// bucketGroups holds each group's desired state and catch-up settings
// (ferryv1.GroupRecord), keyed by the group's name. The rollout engine is
// their only writer.
var bucketGroups = []byte("groups")

// SaveGroup writes a group's record with the audit entry of the change
// (audit.go), both or neither.
func (s *Store) SaveGroup(g *ferryv1.GroupRecord, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx *bolt.Tx) error {
		return put(tx.Bucket(bucketGroups), "group", g.GetName(), g)
	})
}

// Groups returns every stored group record, by name.
func (s *Store) Groups() ([]*ferryv1.GroupRecord, error) {
	var out []*ferryv1.GroupRecord
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		out, err = list[ferryv1.GroupRecord](tx.Bucket(bucketGroups), "group")
		return err
	})
	return out, err
}
