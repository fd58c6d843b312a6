package store

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketAudit = []byte("audit")

// AppendAudit adds an event to the audit log (append-only, keyed by a
// monotonically increasing sequence).
func (s *Store) AppendAudit(ev *ferryv1.AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error { return appendAudit(tx, ev) })
}

// appendAudit adds ev within tx, for writes audited in the transaction
// that makes them.
func appendAudit(tx *bolt.Tx, ev *ferryv1.AuditEvent) error {
	data, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return b.Put(k[:], data)
}

// AuditEvents returns up to limit events, newest first.
func (s *Store) AuditEvents(limit int) ([]*ferryv1.AuditEvent, error) {
	var out []*ferryv1.AuditEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			ev := &ferryv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}
