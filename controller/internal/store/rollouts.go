package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketRollouts = []byte("rollouts")

// SaveRollout writes a rollout (the engine calls it at every transition).
func (s *Store) SaveRollout(r *ferryv1.Rollout) error {
	data, err := proto.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode rollout %s: %w", r.GetId(), err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketRollouts)
		if err != nil {
			return err
		}
		return b.Put([]byte(r.GetId()), data)
	})
}

// Rollouts returns every stored rollout.
func (s *Store) Rollouts() ([]*ferryv1.Rollout, error) {
	var out []*ferryv1.Rollout
	err := s.ForEachProto(bucketRollouts, func(k string, data []byte) error {
		r := &ferryv1.Rollout{}
		if err := proto.Unmarshal(data, r); err != nil {
			return fmt.Errorf("rollout %s: %w", k, err)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}
