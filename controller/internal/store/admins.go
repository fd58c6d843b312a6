package store

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketRevokedAdmins = []byte("revoked_admins")

// RevokeAdmin records that certificates issued to name before at are
// refused.
func (s *Store) RevokeAdmin(name string, at time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketRevokedAdmins)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), []byte(at.UTC().Format(time.RFC3339Nano)))
	})
}

// RevokedAdmins returns every revocation: name → time.
func (s *Store) RevokedAdmins() (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRevokedAdmins)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			t, err := time.Parse(time.RFC3339Nano, string(v))
			if err != nil {
				return err
			}
			out[string(k)] = t
			return nil
		})
	})
	return out, err
}
