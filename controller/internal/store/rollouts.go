package store

import (
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketRollouts = []byte("rollouts")

// SaveRollout writes a rollout (the engine calls it at every transition),
// with the audit entry of the admin action that made the transition
// (audit.go; nil for the engine's own).
func (s *Store) SaveRollout(r *ferryv1.Rollout, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return put(tx.Bucket(bucketRollouts), "rollout", r.GetId(), r)
	})
}

// Rollouts returns every stored rollout.
func (s *Store) Rollouts() ([]*ferryv1.Rollout, error) {
	var out []*ferryv1.Rollout
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = list[ferryv1.Rollout](tx.Bucket(bucketRollouts), "rollout")
		return err
	})
	return out, err
}
