package replica

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Peer is another live controller of the installation.
type Peer struct {
	ID   string `json:"id"`   // the controller's name among the others
	Addr string `json:"addr"` // host:port of its gRPC API, which it advertises
}

func (p Peer) String() string {
	if p.ID == "" || p.ID == p.Addr {
		return "controller " + p.Addr
	}
	return "controller " + p.ID + " (" + p.Addr + ")"
}

// Peers lists the other controllers that are up now.
type Peers interface {
	Peers() []Peer
}

// Static is a fixed list of peers, for tests.
type Static []Peer

// Peers returns the list.
func (s Static) Peers() []Peer { return s }

// MembersDir is where, under the store's etcd prefix, each live controller
// keeps its member key, MembersDir/<id>, holding a JSON {"id", "addr"}
// under a lease that ends with it (package cluster writes them).
const MembersDir = "members"

// MemberKey is the member key of controller id under the store's prefix.
func MemberKey(prefix, id string) string {
	return strings.TrimRight(prefix, "/") + "/" + MembersDir + "/" + id
}

// maxMembers bounds what a members listing reads.
const maxMembers = 64

// membersTimeout bounds one listing; a controller cut off from etcd has no
// peers to offer.
const membersTimeout = 3 * time.Second

// Members reads the live controllers from the member keys in etcd, leaving
// out this controller itself.
type Members struct {
	cli    *clientv3.Client
	prefix string
	self   Peer
	log    *slog.Logger
}

// NewMembers reads the member keys under the store's etcd prefix; self
// (matched by ID or address) is left out of the peers.
func NewMembers(cli *clientv3.Client, prefix string, self Peer, log *slog.Logger) *Members {
	if log == nil {
		log = slog.Default()
	}
	return &Members{cli: cli, prefix: prefix, self: self, log: log}
}

// Peers lists the other controllers whose member keys are there now; none
// when etcd cannot be read.
func (m *Members) Peers() []Peer {
	ctx, cancel := context.WithTimeout(context.Background(), membersTimeout)
	defer cancel()
	dir := MemberKey(m.prefix, "")
	resp, err := m.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithLimit(maxMembers))
	if err != nil {
		m.log.Warn("list the other controllers in etcd; artifacts are not copied to them until it works", "prefix", dir, "err", err)
		return nil
	}
	var out []Peer
	for _, kv := range resp.Kvs {
		var p Peer
		if err := json.Unmarshal(kv.Value, &p); err != nil || p.Addr == "" {
			m.log.Debug("skip a member key that is not {id, addr}", "key", string(kv.Key))
			continue
		}
		if p.ID == "" {
			p.ID = strings.TrimPrefix(string(kv.Key), dir)
		}
		if p.Addr == m.self.Addr || m.self.ID != "" && p.ID == m.self.ID {
			continue
		}
		out = append(out, p)
	}
	return out
}
