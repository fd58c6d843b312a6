package store

import (
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketJobLogs = []byte("joblogs")

// MaxJobLog bounds the output kept per rollout and node; older output is
// dropped first, with a marker.
const MaxJobLog = 256 << 10

const truncatedMarker = "[... earlier output dropped ...]\n"

func jobLogKey(rolloutID, nodeID string) []byte { return []byte(rolloutID + "/" + nodeID) }

// jobLogTotalKey holds how many bytes were ever appended, so a follower
// can page by offset even after the front was dropped.
func jobLogTotalKey(rolloutID, nodeID string) []byte {
	return []byte(rolloutID + "/" + nodeID + "#total")
}

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
		var total [8]byte
		if t := b.Get(jobLogTotalKey(rolloutID, nodeID)); len(t) == 8 {
			copy(total[:], t)
		}
		binary.BigEndian.PutUint64(total[:], binary.BigEndian.Uint64(total[:])+uint64(len(text)))
		if err := b.Put(jobLogTotalKey(rolloutID, nodeID), total[:]); err != nil {
			return err
		}
		return b.Put(k, buf)
	})
}

// JobLog returns a job's stored output (its most recent MaxJobLog bytes)
// and how many bytes were appended in all.
func (s *Store) JobLog(rolloutID, nodeID string) (text string, total uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobLogs)
		if b == nil {
			return nil
		}
		text = string(b.Get(jobLogKey(rolloutID, nodeID)))
		if t := b.Get(jobLogTotalKey(rolloutID, nodeID)); len(t) == 8 {
			total = binary.BigEndian.Uint64(t)
		}
		return nil
	})
	return text, total, err
}
