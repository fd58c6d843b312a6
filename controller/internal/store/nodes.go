package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketNodes = []byte("nodes")

// NodeRecord is what the controller persists about an enrolled node. Live
// state (stream, heartbeats) is kept in memory by the fleet registry.
type NodeRecord struct {
	ID         string            `json:"id"`
	Group      string            `json:"group"`
	Labels     map[string]string `json:"labels,omitempty"`
	EnrolledAt time.Time         `json:"enrolled_at"`
	TokenID    string            `json:"token_id"`
	// Serials of the certificates accepted for this node: the current one
	// and, during a renewal, the one it replaced.
	CertSerials   []string  `json:"cert_serials"`
	CertExpiresAt time.Time `json:"cert_expires_at"`
	// LastConnectedAt is when the agent last opened its stream (written on
	// connect, not per heartbeat).
	LastConnectedAt time.Time `json:"last_connected_at,omitempty"`
	Removed         bool      `json:"removed,omitempty"`
	RemovedAt       time.Time `json:"removed_at,omitempty"`
	RemovedBy       string    `json:"removed_by,omitempty"`
}

// ErrNodeExists is returned when enrolling an ID an active node holds.
var ErrNodeExists = errors.New("node exists")

// Nodes returns every node record sorted by ID.
func (s *Store) Nodes() ([]NodeRecord, error) {
	var out []NodeRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			var n NodeRecord
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("node %s: %w", k, err)
			}
			out = append(out, n)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// PutNode writes a node record.
func (s *Store) PutNode(n NodeRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketNodes), n.ID, n)
	})
}

// EnrollNode consumes one use of a join token and records the node, in one
// transaction: if either fails, neither happens.
func (s *Store) EnrollNode(tokenID string, checkSecret func(TokenRecord) error, now time.Time, build func(TokenRecord) (NodeRecord, error)) (NodeRecord, error) {
	var out NodeRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTokens)
		var tok TokenRecord
		if err := getJSON(tb, tokenID, &tok); err != nil {
			if errors.Is(err, ErrNotFound) {
				return ErrTokenInvalid
			}
			return err
		}
		if err := checkSecret(tok); err != nil {
			return err
		}
		if err := tok.Usable(now); err != nil {
			return unusableToken{err}
		}
		n, err := build(tok)
		if err != nil {
			return err
		}
		nb := tx.Bucket(bucketNodes)
		var existing NodeRecord
		if err := getJSON(nb, n.ID, &existing); err == nil && !existing.Removed {
			return fmt.Errorf("%w: node ID %q is already enrolled; choose another --node-id, or remove the old node first with `ferryctl node remove %s`", ErrNodeExists, n.ID, n.ID)
		}
		tok.Uses++
		if err := putJSON(tb, tok.ID, tok); err != nil {
			return err
		}
		out = n
		return putJSON(nb, n.ID, n)
	})
	return out, err
}

// TouchNode records when a node last connected. Concurrent calls are
// coalesced into one transaction (bbolt's Batch).
func (s *Store) TouchNode(id string, at time.Time) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		var n NodeRecord
		if err := getJSON(b, id, &n); err != nil {
			return err
		}
		n.LastConnectedAt = at
		return putJSON(b, id, n)
	})
}
