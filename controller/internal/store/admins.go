package store

import (
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketRevokedAdmins = []byte("revoked_admins")

// RevokeAdmin records that certificates issued to name before at are
// refused, with the action's audit entry (audit.go).
func (s *Store) RevokeAdmin(name string, at time.Time, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return put(tx.Bucket(bucketRevokedAdmins), "admin revocation", name, &ferryv1.AdminRevocation{RevokedBefore: timestamp(at)})
	})
}

// RevokedAdmins returns every revocation: name → time.
func (s *Store) RevokedAdmins() (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.kv.View(func(tx kvTx) error {
		return forEach(tx.Bucket(bucketRevokedAdmins), "admin revocation", func(name string, r *ferryv1.AdminRevocation) error {
			out[name] = fromTimestamp(r.GetRevokedBefore())
			return nil
		})
	})
	return out, err
}
