package store

import (
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// bucketGroups holds each group's desired state and catch-up settings
// (ferryv1.GroupRecord), keyed by the group's name. The rollout engine is
// their only writer.
var bucketGroups = []byte("groups")

// SaveGroup writes a group's record with the audit entry of the change
// (audit.go), both or neither.
func (s *Store) SaveGroup(g *ferryv1.GroupRecord, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return put(tx.Bucket(bucketGroups), "group", g.GetName(), g)
	})
}

// Groups returns every stored group record, by name.
func (s *Store) Groups() ([]*ferryv1.GroupRecord, error) {
	var out []*ferryv1.GroupRecord
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = list[ferryv1.GroupRecord](tx.Bucket(bucketGroups), "group")
		return err
	})
	return out, err
}
