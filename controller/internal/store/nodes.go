package store

import (
	"errors"
	"fmt"
	"sort"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketNodes = []byte("nodes")

// NodeRecord is what the controller persists about an enrolled node. Live
// state (stream, heartbeats) is kept in memory by the fleet registry. It is
// stored as a ferryv1.NodeRecord; the JSON tags are the format of schema 1
// stores, which migrate reads once.
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
	// GossipAddress is where the node's last stream said it gossips: the
	// stream's peer IP and the port its hello named (fleet.GossipAddr).
	GossipAddress string `json:"gossip_address,omitempty"`
}

// ErrNodeExists is returned when enrolling an ID an active node holds.
var ErrNodeExists = errors.New("node exists")

// Nodes returns every node record sorted by ID.
func (s *Store) Nodes() ([]NodeRecord, error) {
	var out []NodeRecord
	err := s.kv.View(func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		recs, err := list[ferryv1.NodeRecord](tx.Bucket(bucketNodes), "node")
		for _, r := range recs {
			out = append(out, nodeFromProto(r))
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// PutNode writes a node record, with the audit entry of the admin action
// that changed it (audit.go; nil for a renewal).
func (s *Store) PutNode(n NodeRecord, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		return putNode(tx.Bucket(bucketNodes), n)
	})
}

// EnrollNode consumes one use of a join token, records the node and writes
// the enrollment's audit entry ev (audit.go), in one transaction: if one
// fails, none happens.
func (s *Store) EnrollNode(tokenID string, checkSecret func(TokenRecord) error, now time.Time, build func(TokenRecord) (NodeRecord, error), ev *ferryv1.AuditEvent) (NodeRecord, error) {
	var out NodeRecord
	err := s.audited(ev, func(tx kvTx) error {
		tb := tx.Bucket(bucketTokens)
		tok, err := getToken(tb, tokenID)
		if err != nil {
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
		if existing, err := getNode(nb, n.ID); err == nil && !existing.Removed {
			return fmt.Errorf("%w: node ID %q is already enrolled; choose another --node-id, or remove the old node first with `ferryctl node remove %s`", ErrNodeExists, n.ID, n.ID)
		}
		tok.Uses++
		if err := putToken(tb, tok); err != nil {
			return err
		}
		out = n
		return putNode(nb, n)
	})
	return out, err
}

// UpdateNode changes a node's record with change, with the audit entry ev
// of the admin action (audit.go): if change fails or ev cannot be written,
// nothing is.
func (s *Store) UpdateNode(id string, change func(*NodeRecord) error, ev *ferryv1.AuditEvent) (NodeRecord, error) {
	var out NodeRecord
	err := s.audited(ev, func(tx kvTx) error {
		b := tx.Bucket(bucketNodes)
		n, err := getNode(b, id)
		if err != nil {
			return err
		}
		if err := change(&n); err != nil {
			return err
		}
		out = n
		return putNode(b, n)
	})
	if err != nil {
		return NodeRecord{}, err
	}
	return out, nil
}

// DeleteNode deletes a node's record, with the audit entry ev of the
// admin action (audit.go).
func (s *Store) DeleteNode(id string, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		b := tx.Bucket(bucketNodes)
		if b.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(id))
	})
}

// TouchNode records when a node last connected and the gossip address of
// that stream. Concurrent calls are coalesced into one transaction
// (bbolt's Batch).
func (s *Store) TouchNode(id string, at time.Time, gossipAddr string) error {
	return s.kv.Batch(func(tx kvTx) error {
		b := tx.Bucket(bucketNodes)
		n, err := getNode(b, id)
		if err != nil {
			return err
		}
		n.LastConnectedAt, n.GossipAddress = at, gossipAddr
		return putNode(b, n)
	})
}

func getNode(b kvBucket, id string) (NodeRecord, error) {
	r, err := get[ferryv1.NodeRecord](b, "node", id)
	if err != nil {
		return NodeRecord{}, err
	}
	return nodeFromProto(r), nil
}

func putNode(b kvBucket, n NodeRecord) error { return put(b, "node", n.ID, nodeToProto(n)) }

func nodeToProto(n NodeRecord) *ferryv1.NodeRecord {
	return &ferryv1.NodeRecord{
		Id: n.ID, Group: n.Group, Labels: n.Labels, EnrolledAt: timestamp(n.EnrolledAt), TokenId: n.TokenID,
		CertSerials: n.CertSerials, CertExpiresAt: timestamp(n.CertExpiresAt), LastConnectedAt: timestamp(n.LastConnectedAt),
		Removed: n.Removed, RemovedAt: timestamp(n.RemovedAt), RemovedBy: n.RemovedBy, GossipAddress: n.GossipAddress,
	}
}

func nodeFromProto(r *ferryv1.NodeRecord) NodeRecord {
	return NodeRecord{
		ID: r.GetId(), Group: r.GetGroup(), Labels: r.GetLabels(), EnrolledAt: fromTimestamp(r.GetEnrolledAt()), TokenID: r.GetTokenId(),
		CertSerials: r.GetCertSerials(), CertExpiresAt: fromTimestamp(r.GetCertExpiresAt()), LastConnectedAt: fromTimestamp(r.GetLastConnectedAt()),
		Removed: r.GetRemoved(), RemovedAt: fromTimestamp(r.GetRemovedAt()), RemovedBy: r.GetRemovedBy(), GossipAddress: r.GetGossipAddress(),
	}
}
