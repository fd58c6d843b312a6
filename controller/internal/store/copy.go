package store

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
)

// Copying one store into another: `ferry-controller migrate` moves a
// bbolt data dir's store into etcd with CopyInto and checks the result with
// Compare. Records are copied as the bytes they are stored as (the same
// protobuf on both backends), bucket by bucket, nested buckets (job output)
// and the audit log's sequence included.

// DomainCount is how many records one domain (a top-level bucket) holds.
type DomainCount struct {
	Domain  string
	Records int
}

// copyTxRecords and copyTxBytes bound one transaction of a copy (etcd's
// limits on a transaction's operations and size).
const (
	copyTxRecords = 64
	copyTxBytes   = 512 << 10
)

// record is one stored value and where it is.
type record struct {
	path [][]byte // bucket names, top-level first
	key  []byte   // nil for a (possibly empty) nested bucket itself
	val  []byte
}

func (r record) name() string {
	parts := make([]string, 0, len(r.path)+1)
	for _, p := range r.path {
		parts = append(parts, fmt.Sprintf("%q", p))
	}
	if r.key != nil {
		parts = append(parts, fmt.Sprintf("%q", r.key))
	}
	return strings.Join(parts, "/")
}

// walkRecords calls fn with every record of the store, bucket by bucket in
// allBuckets' order, each bucket's records in key order and then its
// nested buckets in name order.
func walkRecords(tx kvTx, fn func(record) error) error {
	var visit func(b kvBucket, path [][]byte) error
	visit = func(b kvBucket, path [][]byte) error {
		if err := forEachKV(b, func(k, v []byte) error {
			return fn(record{path: path, key: slices.Clone(k), val: slices.Clone(v)})
		}); err != nil {
			return err
		}
		return b.Buckets(nil, func(name []byte) error {
			sub := append(slices.Clone(path), slices.Clone(name))
			if err := fn(record{path: sub}); err != nil {
				return err
			}
			nb := b.Bucket(name)
			if nb == nil {
				return fmt.Errorf("bucket %q vanished while it was read", name)
			}
			return visit(nb, sub)
		})
	}
	for _, name := range allBuckets {
		if err := visit(tx.Bucket(name), [][]byte{name}); err != nil {
			return err
		}
	}
	return nil
}

// Empty says whether the store holds no record (its record format marker
// aside).
func (s *Store) Empty() (bool, error) {
	empty := true
	err := s.kv.View(func(tx kvTx) error {
		empty = true
		return walkRecords(tx, func(r record) error {
			if len(r.path) == 1 && bytes.Equal(r.path[0], bucketMeta) && bytes.Equal(r.key, schemaKey) {
				return nil
			}
			empty = false
			return errStopWalk
		})
	})
	if err == errStopWalk { //nolint:errorlint // our own sentinel, never wrapped
		err = nil
	}
	return empty, err
}

var errStopWalk = fmt.Errorf("stop")

// CopyInto copies every record of s into dst, which should be empty (the
// caller checks with Empty), in transactions of a bounded size, and
// carries each top-level bucket's sequence on (the audit log's next entry
// number). It reads s in one transaction, so the copy is of one moment.
func (s *Store) CopyInto(dst *Store) ([]DomainCount, error) {
	counts := map[string]int{}
	var pending []record
	size := 0
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		batch := pending
		pending, size = nil, 0
		return dst.kv.Update(func(tx kvTx) error {
			for _, r := range batch {
				b := tx.Bucket(r.path[0])
				for _, name := range r.path[1:] {
					var err error
					if b, err = b.CreateBucketIfNotExists(name); err != nil {
						return err
					}
				}
				if r.key != nil {
					if err := b.Put(r.key, r.val); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	seqs := map[string]uint64{}
	err := s.kv.View(func(tx kvTx) error {
		clear(counts)
		for _, name := range allBuckets {
			seqs[string(name)] = tx.Bucket(name).Sequence()
		}
		return walkRecords(tx, func(r record) error {
			if r.key != nil {
				counts[string(r.path[0])]++
			}
			pending = append(pending, r)
			size += len(r.key) + len(r.val)
			if len(pending) >= copyTxRecords || size >= copyTxBytes {
				return flush()
			}
			return nil
		})
	})
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = dst.kv.Update(func(tx kvTx) error {
			for name, seq := range seqs {
				if seq > 0 {
					if err := tx.Bucket([]byte(name)).SetSequence(seq); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("copy the store: %w", err)
	}
	return domainCounts(counts), nil
}

func domainCounts(counts map[string]int) []DomainCount {
	out := make([]DomainCount, 0, len(allBuckets))
	for _, name := range allBuckets {
		out = append(out, DomainCount{Domain: string(name), Records: counts[string(name)]})
	}
	return out
}

// Compare reads a and b record by record. It returns how many records are
// identical in both, and names each that differs, is missing from b or is
// only in b (at most maxDiffs of them; the count goes on).
func Compare(a, b *Store, maxDiffs int) (identical int, diffs []string, err error) {
	sums := map[string][32]byte{}
	names := map[string]string{}
	err = a.kv.View(func(tx kvTx) error {
		clear(sums)
		return walkRecords(tx, func(r record) error {
			k := recordID(r)
			sums[k], names[k] = sha256.Sum256(r.val), r.name()
			return nil
		})
	})
	if err != nil {
		return 0, nil, err
	}
	more := 0
	note := func(s string) {
		if len(diffs) < maxDiffs {
			diffs = append(diffs, s)
		} else {
			more++
		}
	}
	err = b.kv.View(func(tx kvTx) error {
		identical, diffs, more = 0, nil, 0
		seen := map[string]bool{}
		err := walkRecords(tx, func(r record) error {
			k := recordID(r)
			seen[k] = true
			want, ok := sums[k]
			switch {
			case !ok:
				note(r.name() + ": only in the copy")
			case want != sha256.Sum256(r.val):
				note(r.name() + ": differs")
			case r.key != nil:
				identical++
			}
			return nil
		})
		for k := range sums {
			if !seen[k] {
				note(names[k] + ": missing from the copy")
			}
		}
		return err
	})
	slices.Sort(diffs)
	if more > 0 {
		diffs = append(diffs, fmt.Sprintf("and %d more", more))
	}
	return identical, diffs, err
}

func recordID(r record) string {
	var sb strings.Builder
	for _, p := range r.path {
		fmt.Fprintf(&sb, "%d:%s/", len(p), p)
	}
	if r.key != nil {
		fmt.Fprintf(&sb, "=%s", r.key)
	}
	return sb.String()
}
