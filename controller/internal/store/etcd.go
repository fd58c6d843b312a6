package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// OpenEtcd opens the store kept in etcd under prefix (etcdclient's
// Config.KeyPrefix), through cli, which stays its caller's to close.
// Several controllers open the same prefix and share every record: each
// method's transaction is atomic across them (kvetcd.go). A prefix with no
// keys becomes a new store; one holding keys that are not a Ferry store,
// or a store of a newer record format, is refused.
func OpenEtcd(cli *clientv3.Client, prefix string) (*Store, error) {
	kv := newEtcdKV(cli, strings.TrimRight(prefix, "/"))
	where := fmt.Sprintf("etcd store %s at %s", kv.prefix, strings.Join(kv.endpoints, ","))
	err := kv.Update(func(tx kvTx) error {
		meta := tx.Bucket(bucketMeta)
		data := meta.Get(schemaKey)
		switch {
		case data == nil:
			empty := true
			for _, b := range allBuckets {
				if err := tx.Bucket(b).Scan(nil, func(_, _ []byte) (bool, error) { empty = false; return false, nil }); err != nil {
					return err
				}
			}
			if !empty {
				return &openError{ErrDamaged, fmt.Sprintf("%s holds records but no record format marker: it is not a Ferry store; use another --etcd-prefix", where)}
			}
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], schemaCurrent)
			return meta.Put(schemaKey, v[:])
		case len(data) != 8:
			return &openError{ErrDamaged, fmt.Sprintf("%s: its record format marker has %d bytes, want 8", where, len(data))}
		}
		v := binary.BigEndian.Uint64(data)
		if v > schemaCurrent {
			return &openError{ErrDamaged, fmt.Sprintf("%s was written by a newer ferry-controller (record format %d; this one reads up to %d): run that version", where, v, schemaCurrent)}
		}
		if v < schemaCurrent {
			// Format 2's rollout records (nodes inside) are read as they
			// are and split at their next save (rollouts.go); the marker
			// makes older controllers refuse the store from now on.
			var cur [8]byte
			binary.BigEndian.PutUint64(cur[:], schemaCurrent)
			return meta.Put(schemaKey, cur[:])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	return &Store{kv: kv}, nil
}

// ErrFenced is the error of a write made through a Fenced store after its
// fence stopped holding: the controller is no longer the leader.
var ErrFenced = errors.New("this controller is no longer the leader; the write was not made")

// Fenced returns the store with every write transaction on etcd made only
// while fence's compares hold (checked by etcd in the same transaction),
// so a controller that lost its leadership cannot overwrite what the new
// leader wrote. fence returns the compares, or an error (the write's) when
// it knows they cannot hold. On bbolt it returns s.
func (s *Store) Fenced(fence func() ([]clientv3.Cmp, error)) *Store {
	e, ok := s.kv.(*etcdKV)
	if !ok {
		return s
	}
	return &Store{kv: &etcdKV{cli: e.cli, prefix: e.prefix, endpoints: e.endpoints, timeout: e.timeout, fence: fence}}
}

// OnEtcd says whether the store is kept in etcd.
func (s *Store) OnEtcd() bool { return s.db == nil }

// Follow calls changed after another controller may have written
// records of domain (a top-level bucket: "revoked_admins", "nodes", ...),
// until ctx ends, so a controller that keeps some records in memory
// rereads them. Writes are coalesced: changed runs one call at a time, at
// most once per followGap, and a write it may have missed always brings
// one more call, so the last state is never lost. On bbolt only this
// process writes: it returns at once and never calls changed.
func (s *Store) Follow(ctx context.Context, domain string, changed func()) {
	e, ok := s.kv.(*etcdKV)
	if !ok {
		return
	}
	c := newCoalescer(followGap)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.watchDomain(wctx, domain, c.trigger)
	}()
	c.run(ctx, changed)
	cancel()
	<-done
}

// watchDomain calls changed for each batch of writes to domain, and once
// after each gap in its watch (writes may have been missed).
func (e *etcdKV) watchDomain(ctx context.Context, domain string, changed func()) {
	// Every write below a bucket bumps its version key (kvetcd.go).
	key := e.prefix + "/" + escName([]byte(domain)) + "/!v"
	for ctx.Err() == nil {
		for resp := range e.cli.Watch(clientv3.WithRequireLeader(ctx), key) {
			if resp.Canceled {
				break
			}
			if len(resp.Events) > 0 {
				changed()
			}
		}
		// The watch ended (etcd lost its leader, or was compacted past
		// it): reread once, since changes may have been missed, and watch
		// again after a pause.
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		changed()
	}
}
