package store

// The store's records live in a small transactional key-value layer with
// two backends: bbolt (kvbolt.go, the embedded default, its file format
// unchanged) and etcd v3 (kvetcd.go, for several controllers). The typed
// per-domain methods are written once against these interfaces; each runs
// its reads and writes in one transaction of the backend, so what is
// atomic on bbolt is atomic on etcd.

// kvStore is a backend: transactions over named buckets.
type kvStore interface {
	// View runs fn in a read-only transaction: one consistent snapshot.
	View(fn func(kvTx) error) error
	// Update runs fn in a read-write transaction: all of fn's writes or
	// none. fn may be run more than once (etcd retries a transaction that
	// another writer raced), so it must not keep state across runs.
	Update(fn func(kvTx) error) error
	// Batch is Update for small writes many goroutines make at once;
	// bbolt coalesces them into one commit.
	Batch(fn func(kvTx) error) error
	Close() error
}

// kvTx is one transaction.
type kvTx interface {
	// Bucket returns a top-level bucket; every bucket of allBuckets exists.
	Bucket(name []byte) kvBucket
}

// kvBucket is a bucket of one transaction: keys in byte order, values,
// and nested buckets (job output keeps one per job). Values returned are
// valid only during the transaction.
type kvBucket interface {
	Get(key []byte) []byte
	Put(key, value []byte) error
	Delete(key []byte) error
	// DeleteRange deletes the keys from from up to, not including, to.
	DeleteRange(from, to []byte) error
	// Scan calls fn with each record whose key is at least from, in key
	// order, until fn returns false or an error.
	Scan(from []byte, fn func(k, v []byte) (bool, error)) error
	// ScanReverse calls fn with each record from the last key backwards,
	// until fn returns false or an error.
	ScanReverse(fn func(k, v []byte) (bool, error)) error
	// NextSequence returns the bucket's next sequence number, from 1.
	NextSequence() (uint64, error)
	// Sequence is the last number NextSequence returned; SetSequence
	// sets it (a migration carries the audit log's on).
	Sequence() uint64
	SetSequence(v uint64) error

	// Bucket returns the nested bucket name, nil when there is none.
	Bucket(name []byte) kvBucket
	CreateBucketIfNotExists(name []byte) (kvBucket, error)
	DeleteBucket(name []byte) error
	// Buckets calls fn with the name of each nested bucket that starts
	// with prefix, in name order.
	Buckets(prefix []byte, fn func(name []byte) error) error
}

// forEachKV calls fn with every record of b in key order.
func forEachKV(b kvBucket, fn func(k, v []byte) error) error {
	return b.Scan(nil, func(k, v []byte) (bool, error) { return true, fn(k, v) })
}
