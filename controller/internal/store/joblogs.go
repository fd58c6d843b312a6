package store

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketJobLogs = []byte("joblogs")

// MaxJobLog bounds the output kept per rollout and node; older output is
// dropped first, with a marker.
const MaxJobLog = 256 << 10

const truncatedMarker = "[... earlier output dropped ...]\n"

func jobLogKey(rolloutID, nodeID string) []byte { return []byte(rolloutID + "/" + nodeID) }

// AppendJobLog adds output to a job's log. Concurrent appends are batched.
func (s *Store) AppendJobLog(rolloutID, nodeID, text string, at time.Time) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketJobLogs)
		if err != nil {
			return err
		}
		k := jobLogKey(rolloutID, nodeID)
		old := b.Get(k)
		buf := make([]byte, 0, len(old)+len(text))
		buf = append(buf, old...)
		buf = append(buf, text...)
		if len(buf) > MaxJobLog {
			cut := len(buf) - MaxJobLog + len(truncatedMarker)
			buf = append([]byte(truncatedMarker), buf[cut:]...)
		}
		return b.Put(k, buf)
	})
}

// JobLog returns a job's stored output.
func (s *Store) JobLog(rolloutID, nodeID string) (string, error) {
	var out string
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobLogs)
		if b == nil {
			return nil
		}
		out = string(b.Get(jobLogKey(rolloutID, nodeID)))
		return nil
	})
	return out, err
}
