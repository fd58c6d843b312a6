// Package store is the controller's embedded state: a bbolt database in the
// data dir holding nodes, tokens, the audit log, artifacts' metadata,
// packages and rollouts. Each domain keeps its records in its own bucket;
// writes that belong together happen in one transaction, so a rejected
// request changes nothing.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// Store wraps the bbolt database.
type Store struct {
	db *bolt.DB
}

var allBuckets = [][]byte{bucketNodes, bucketTokens, bucketAudit, bucketMeta}

// Open opens (creating if needed) the database at path. A second controller
// on the same data dir is refused rather than waited on forever.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: it is locked by another process; is another ferry-controller using this --data-dir?", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: create buckets: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// DB exposes the database to domain packages that keep their own buckets.
func (s *Store) DB() *bolt.DB { return s.db }

// EnsureBucket creates a bucket if it does not exist.
func (s *Store) EnsureBucket(name []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(name)
		return err
	})
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put([]byte(key), data)
}

func getJSON(b *bolt.Bucket, key string, v any) error {
	data := b.Get([]byte(key))
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}

// GetProto reads a protobuf message; ErrNotFound when absent.
func (s *Store) GetProto(bucket []byte, key string, m proto.Message) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return ErrNotFound
		}
		data := b.Get([]byte(key))
		if data == nil {
			return ErrNotFound
		}
		return proto.Unmarshal(data, m)
	})
}

// ForEachProto calls fn with every record's raw bytes in key order.
func (s *Store) ForEachProto(bucket []byte, fn func(key string, data []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
	})
}

// Delete removes bucket/key.
func (s *Store) Delete(bucket []byte, key string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
}
