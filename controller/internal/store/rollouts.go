package store

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A rollout is stored as its header and its node records in chunks
// (record format 3), so that one node's job update rewrites one chunk of a
// few dozen nodes, not every node's record: a rollout to 5,000 nodes is
// about 1.7 MiB once every node has reported its steps, more than etcd
// takes in one request (--max-request-bytes, 1.5 MiB by default), and
// rewriting it at each of its 15,000 job updates wrote 25 GiB.
//
//	rollouts/ID              the Rollout without its nodes (the header)
//	rollout_nodes/ID/00000   a Rollout holding only nodes: the first chunk
//	rollout_nodes/ID/00001   the next chunk, and so on in start order
//
// Each save is still one transaction: the header and every chunk that
// changed, so a transition that touches many nodes is atomic. The chunk
// size grows with the rollout (chunkSize) so that no rollout needs more
// than maxChunks chunks, which keeps the largest save (the rollout's
// creation) within etcd's operations per transaction (--max-txn-ops, 128
// by default). Format 2 kept the nodes inside the header's record;
// migrate.go splits such records when a bbolt store opens, and Rollouts
// still reads them (an etcd store's rollouts are split at their next
// save).
var (
	bucketRollouts     = []byte("rollouts")
	bucketRolloutNodes = []byte("rollout_nodes")
)

const (
	// minChunk is the fewest nodes a chunk holds (the last one aside).
	minChunk = 32
	// maxChunks bounds a rollout's chunks: with the header, the buckets'
	// version keys and an audit entry a creation stays under etcd's 128
	// operations per transaction.
	maxChunks = 100
)

// chunkSize is how many node records each chunk of a rollout of n nodes
// holds.
func chunkSize(n int) int { return max(minChunk, (n+maxChunks-1)/maxChunks) }

func chunkKey(id string, i int) string { return fmt.Sprintf("%s/%05d", id, i) }

// rolloutCache is what this process last wrote of each rollout: digests
// of its header and of each chunk, so a save writes only the chunks that
// changed. It is trusted only while the stored header is the one it
// wrote (another controller's save, or a failed one, makes the save read
// the stored chunks instead).
type rolloutCache struct {
	mu   sync.Mutex
	byID map[string]savedRollout
}

type savedRollout struct {
	header [32]byte
	chunks [][32]byte
}

func (c *rolloutCache) get(id string) (savedRollout, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.byID[id]
	return s, ok
}

func (c *rolloutCache) set(id string, s savedRollout) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID == nil {
		c.byID = map[string]savedRollout{}
	}
	c.byID[id] = s
}

func (c *rolloutCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.byID, id)
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// splitRollout encodes r as its header and its chunks. It takes r's
// nodes out for the header's encoding and puts them back: r is the
// caller's to give (the engine hands over a copy it does not touch while
// SaveRollout runs), and a copy of every node for each save was the
// largest cost of a save at 5,000 nodes.
func splitRollout(r *ferryv1.Rollout) (header []byte, chunks [][]byte, err error) {
	nodes := r.Nodes
	r.Nodes = nil
	header, err = deterministic.Marshal(r)
	r.Nodes = nodes
	if err != nil {
		return nil, nil, fmt.Errorf("encode rollout %s: %w", r.GetId(), err)
	}
	size := chunkSize(len(r.GetNodes()))
	for from := 0; from < len(r.GetNodes()); from += size {
		c, err := deterministic.Marshal(&ferryv1.Rollout{Nodes: r.GetNodes()[from:min(from+size, len(r.GetNodes()))]})
		if err != nil {
			return nil, nil, fmt.Errorf("encode rollout %s nodes: %w", r.GetId(), err)
		}
		chunks = append(chunks, c)
	}
	return header, chunks, nil
}

// SaveRollout writes a rollout (the engine calls it at every transition),
// with the audit entry of the admin action that made the transition
// (audit.go; nil for the engine's own): the header and the chunks of
// nodes that changed since this process last saved it, in one
// transaction.
func (s *Store) SaveRollout(r *ferryv1.Rollout, ev *ferryv1.AuditEvent) error {
	id := r.GetId()
	header, chunks, err := splitRollout(r)
	if err != nil {
		return err
	}
	sums := make([][32]byte, len(chunks))
	for i, c := range chunks {
		sums[i] = sha256.Sum256(c)
	}
	cached, haveCache := s.rollouts.get(id)
	err = s.audited(ev, func(tx kvTx) error {
		rb, nb := tx.Bucket(bucketRollouts), tx.Bucket(bucketRolloutNodes)
		// What is stored now: the cache when the stored header is the one
		// this process wrote last, else the stored chunks themselves.
		var stored [][32]byte
		if old := rb.Get([]byte(id)); old != nil {
			if haveCache && sha256.Sum256(old) == cached.header {
				stored = cached.chunks
			} else {
				var err error
				if stored, err = storedChunks(nb, id); err != nil {
					return err
				}
			}
		}
		if err := rb.Put([]byte(id), header); err != nil {
			return err
		}
		for i, c := range chunks {
			if i < len(stored) && stored[i] == sums[i] {
				continue
			}
			if err := nb.Put([]byte(chunkKey(id, i)), c); err != nil {
				return err
			}
		}
		if len(stored) > len(chunks) {
			return nb.DeleteRange([]byte(chunkKey(id, len(chunks))), []byte(id+"0")) // '0' follows '/'
		}
		return nil
	})
	if err != nil {
		s.rollouts.drop(id)
		return err
	}
	s.rollouts.set(id, savedRollout{header: sha256.Sum256(header), chunks: sums})
	return nil
}

// storedChunks returns the digests of a rollout's stored chunks, in order.
func storedChunks(nb kvBucket, id string) ([][32]byte, error) {
	var out [][32]byte
	prefix := []byte(id + "/")
	err := nb.Scan(prefix, func(k, v []byte) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		out = append(out, sha256.Sum256(v))
		return true, nil
	})
	return out, err
}

// Rollouts returns every stored rollout, its nodes in start order.
func (s *Store) Rollouts() ([]*ferryv1.Rollout, error) {
	var out []*ferryv1.Rollout
	err := s.kv.View(func(tx kvTx) (err error) {
		out, err = list[ferryv1.Rollout](tx.Bucket(bucketRollouts), "rollout")
		if err != nil {
			return err
		}
		byID := make(map[string]*ferryv1.Rollout, len(out))
		for _, r := range out {
			byID[r.GetId()] = r
		}
		// One pass over every chunk, in key order: each rollout's in
		// chunk order. A format 2 record keeps its nodes in the header
		// and has no chunks.
		return forEachKV(tx.Bucket(bucketRolloutNodes), func(k, v []byte) error {
			id, _, ok := strings.Cut(string(k), "/")
			r := byID[id]
			if !ok || r == nil {
				return nil // a chunk whose header is gone
			}
			c, err := decode[ferryv1.Rollout]("rollout nodes", k, v)
			if err != nil {
				return err
			}
			r.Nodes = append(r.Nodes, c.GetNodes()...)
			return nil
		})
	})
	return out, err
}

// splitRecords rewrites format 2's rollout records, each with its nodes
// inside, as a header and chunks (migrate.go).
func splitRecords(rb, nb kvBucket) error {
	type rec struct {
		k string
		r *ferryv1.Rollout
	}
	var all []rec
	if err := forEach[ferryv1.Rollout](rb, "rollout", func(k string, r *ferryv1.Rollout) error {
		if len(r.GetNodes()) > 0 {
			all = append(all, rec{k, r})
		}
		return nil
	}); err != nil {
		return err
	}
	for _, x := range all {
		header, chunks, err := splitRollout(x.r)
		if err != nil {
			return err
		}
		if err := rb.Put([]byte(x.k), header); err != nil {
			return err
		}
		for i, c := range chunks {
			if err := nb.Put([]byte(chunkKey(x.r.GetId(), i)), c); err != nil {
				return err
			}
		}
	}
	return nil
}
