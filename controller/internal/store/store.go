// Package store is the controller's embedded state: a bbolt database in the
// data dir (ferry.db) holding nodes, tokens, admin revocations, the audit
// log, job output, artifacts' metadata, packages and rollouts.
//
// Each domain reaches its records only through this package's methods for
// it; no other package opens a bucket. Every record is a protobuf message
// from proto/ferry/v1 (records.go); job output is kept as LogRecords per
// job, bounded (joblogs.go). Writes that belong together happen in one
// transaction, so a rejected request changes nothing.
//
// Open never replaces a store silently: a missing or empty file is
// ErrNoStore unless the caller asks for a new store, and a damaged one is
// ErrDamaged, never a panic (open.go). Backup and Restore copy a store
// consistently (backup.go).
package store

import (
	"errors"
	"fmt"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// Store is the controller's state on one of two backends (kv.go): a bbolt
// file (Open) or an etcd prefix shared by several controllers (OpenEtcd).
type Store struct {
	kv kvStore
	// db is the bbolt database; nil on etcd (Backup, Count's file).
	db *bolt.DB
	// auditFault is the error FailAuditWrites set; nil normally.
	auditFault atomic.Pointer[error]
	// rollouts is what this process last wrote of each rollout
	// (rollouts.go).
	rollouts rolloutCache
}

var allBuckets = [][]byte{
	bucketNodes, bucketTokens, bucketRevokedAdmins, bucketAudit, bucketMeta,
	bucketJobLogs, bucketJobLines, bucketArtifacts, bucketPackages, bucketRollouts, bucketGroups, bucketMirrors, bucketRolloutNodes,
}

// Options say what Open may do besides opening an existing store.
type Options struct {
	// Create makes a new, empty store when the file is missing or empty
	// (0 bytes). Without it either is an error matching ErrNoStore, so the
	// caller decides whether this is a first start. A file with content is
	// never replaced.
	Create bool
}

// Open opens the store at path, checks that it is sound (open.go) and
// brings its records to the current format (migrate.go). A second
// controller on the same data dir is refused rather than waited on.
func Open(path string, opts Options) (*Store, error) {
	db, err := openChecked(path, opts.Create, false)
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bolt.Tx) error { return prepare(tx, path) }); err != nil {
		_ = db.Close() // the error returned is prepare's
		var oe *openError
		if errors.As(err, &oe) {
			return nil, err
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{kv: boltKV{db}, db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.kv.Close() }

// VersionKey is how versioned records (artifacts, packages) are keyed:
// "name@version".
func VersionKey(name, version string) string { return name + "@" + version }
