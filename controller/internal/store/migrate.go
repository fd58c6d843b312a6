package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketMeta = []byte("meta")

// schemaKey in the meta bucket holds the record format (big-endian
// uint64). Stores written before it existed have none and are schema 1.
var schemaKey = []byte("schema")

const (
	// schema 1: nodes and tokens as JSON, admin revocations as RFC 3339
	// text, everything else as protobuf.
	schemaJSON = 1
	// schema 2: every record a protobuf message (records.go).
	schemaProto = 2
	// schema 3: a rollout's node records in chunks beside its header
	// (rollouts.go), not inside it.
	schemaSplitRollouts = 3

	schemaCurrent = schemaSplitRollouts
)

// format checks that the store at path is a Ferry store this version
// reads and returns its record format: 0 for a file without buckets yet
// (just created: it holds no records to lose).
func format(tx *bolt.Tx, path string) (uint64, error) {
	if first, _ := tx.Cursor().First(); first == nil {
		return 0, nil
	}
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, &openError{ErrDamaged, fmt.Sprintf("store %s is a bbolt file but not a Ferry store (it has no %q bucket); restore ferry.db from a backup", path, bucketMeta)}
	}
	data := meta.Get(schemaKey)
	switch {
	case data == nil:
		return schemaJSON, nil
	case len(data) != 8:
		return 0, damaged(path, "its schema marker has %d bytes, want 8", len(data))
	}
	v := binary.BigEndian.Uint64(data)
	if v > schemaCurrent {
		return 0, &openError{ErrDamaged, fmt.Sprintf("store %s was written by a newer ferry-controller (record format %d; this one reads up to %d): run that version, or restore a backup this version wrote", path, v, schemaCurrent)}
	}
	return v, nil
}

// prepare creates the buckets a store lacks and brings its records to
// schemaCurrent, in Open's transaction: a store either opens fully
// converted or not at all.
func prepare(tx *bolt.Tx, path string) error {
	v, err := format(tx, path)
	if err != nil {
		return err
	}
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	if v == schemaCurrent {
		return nil
	}
	if v == schemaJSON {
		if err := fromJSON(tx); err != nil {
			return damaged(path, "converting its records to protobuf failed: %v", err)
		}
	}
	if v < schemaSplitRollouts {
		if err := splitRecords(boltBucket{tx.Bucket(bucketRollouts)}, boltBucket{tx.Bucket(bucketRolloutNodes)}); err != nil {
			return damaged(path, "splitting its rollout records failed: %v", err)
		}
	}
	return setSchema(tx.Bucket(bucketMeta), schemaCurrent)
}

func setSchema(meta *bolt.Bucket, v uint64) error {
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], v)
	return meta.Put(schemaKey, data[:])
}

// fromJSON rewrites schema 1's JSON and text records as protobuf.
func fromJSON(tx *bolt.Tx) error {
	nodes, tokens, admins := tx.Bucket(bucketNodes), tx.Bucket(bucketTokens), tx.Bucket(bucketRevokedAdmins)
	if err := rewrite(nodes, func(k, v []byte) error {
		var n NodeRecord
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("node %s: %w", k, err)
		}
		return putNode(boltBucket{nodes}, n)
	}); err != nil {
		return err
	}
	if err := rewrite(tokens, func(k, v []byte) error {
		var t TokenRecord
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("token %s: %w", k, err)
		}
		return putToken(boltBucket{tokens}, t)
	}); err != nil {
		return err
	}
	return rewrite(admins, func(k, v []byte) error {
		at, err := time.Parse(time.RFC3339Nano, string(v))
		if err != nil {
			return fmt.Errorf("admin revocation %s: %w", k, err)
		}
		return put(boltBucket{admins}, "admin revocation", string(k), &ferryv1.AdminRevocation{RevokedBefore: timestamp(at)})
	})
}

// rewrite calls fn with every record of b, collected first: bbolt does not
// allow writing to a bucket while iterating it.
func rewrite(b *bolt.Bucket, fn func(k, v []byte) error) error {
	type kv struct{ k, v []byte }
	var all []kv
	if err := b.ForEach(func(k, v []byte) error {
		all = append(all, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
		return nil
	}); err != nil {
		return err
	}
	for _, r := range all {
		if err := fn(r.k, r.v); err != nil {
			return err
		}
	}
	return nil
}
