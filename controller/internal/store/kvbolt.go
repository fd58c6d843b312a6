package store

import (
	"bytes"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// boltKV is the bbolt backend: the kv interfaces over bbolt's own
// transactions and buckets, so the file is the one Ferry always wrote.
type boltKV struct{ db *bolt.DB }

func (k boltKV) View(fn func(kvTx) error) error {
	return k.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (k boltKV) Update(fn func(kvTx) error) error {
	return k.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (k boltKV) Batch(fn func(kvTx) error) error {
	return k.db.Batch(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (k boltKV) Close() error { return k.db.Close() }

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(name []byte) kvBucket {
	if b := t.tx.Bucket(name); b != nil {
		return boltBucket{b}
	}
	return nil
}

type boltBucket struct{ b *bolt.Bucket }

func (b boltBucket) Get(key []byte) []byte       { return b.b.Get(key) }
func (b boltBucket) Put(key, value []byte) error { return b.b.Put(key, value) }
func (b boltBucket) Delete(key []byte) error     { return b.b.Delete(key) }

func (b boltBucket) DeleteRange(from, to []byte) error {
	// Collected first: a bbolt cursor may skip a key after a delete.
	var keys [][]byte
	c := b.b.Cursor()
	for k, v := c.Seek(from); k != nil && bytes.Compare(k, to) < 0; k, v = c.Next() {
		if v != nil {
			keys = append(keys, slices.Clone(k))
		}
	}
	for _, k := range keys {
		if err := b.b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (b boltBucket) Scan(from []byte, fn func(k, v []byte) (bool, error)) error {
	c := b.b.Cursor()
	k, v := c.First()
	if from != nil {
		k, v = c.Seek(from)
	}
	for ; k != nil; k, v = c.Next() {
		if v == nil { // a nested bucket
			continue
		}
		if more, err := fn(k, v); err != nil || !more {
			return err
		}
	}
	return nil
}

func (b boltBucket) ScanReverse(fn func(k, v []byte) (bool, error)) error {
	c := b.b.Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		if v == nil {
			continue
		}
		if more, err := fn(k, v); err != nil || !more {
			return err
		}
	}
	return nil
}

func (b boltBucket) NextSequence() (uint64, error) { return b.b.NextSequence() }
func (b boltBucket) Sequence() uint64              { return b.b.Sequence() }
func (b boltBucket) SetSequence(v uint64) error    { return b.b.SetSequence(v) }

func (b boltBucket) Bucket(name []byte) kvBucket {
	if n := b.b.Bucket(name); n != nil {
		return boltBucket{n}
	}
	return nil
}

func (b boltBucket) CreateBucketIfNotExists(name []byte) (kvBucket, error) {
	n, err := b.b.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{n}, nil
}

func (b boltBucket) DeleteBucket(name []byte) error { return b.b.DeleteBucket(name) }

func (b boltBucket) Buckets(prefix []byte, fn func(name []byte) error) error {
	c := b.b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if v != nil {
			continue
		}
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}
