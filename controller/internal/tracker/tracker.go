// Package tracker is the controller's view of peer exchange: per download
// (by digest), which nodes hold which pieces, learned from the pieces each
// node says it holds when it asks (GetPieces), and which node should fetch
// each piece from the controller (seed it). The aim is that the controller
// serves each piece about once per rollout, and the agents pass it on:
//
//   - a piece nobody holds and nobody is assigned is assigned to the
//     asking node, at most SeedWindow pieces a node at once, so the first
//     askers of a rollout split the pieces between them instead of one
//     node fetching everything while the others wait;
//   - a piece that is held, or that a node is assigned to fetch, is
//     answered with its holders, the assigned node first among them when
//     it does not hold it yet (it serves the piece as soon as it has it);
//   - an assigned node that stops asking for SeedTimeout loses its
//     assignments, which go to the next asker.
//
// A node stops being a holder when its stream to the controller closes
// (Forget), when it asks again without the piece, and for the rest of the
// download's life when a peer reports it served bad bytes (Ban). A
// download nobody asked about for IdleTimeout is forgotten. The tracker
// knows nothing of addresses or authorization (package server does) and
// trusts nothing it is told beyond the piece indexes it checks.
package tracker

import (
	"hash/fnv"
	"slices"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultSeedTimeout = 10 * time.Second
	DefaultSeedWindow  = 4
	DefaultMaxHolders  = 8
	DefaultIdleTimeout = 15 * time.Minute
	DefaultMaxSwarms   = 256
)

// Config configures a Tracker; zero fields take their defaults.
type Config struct {
	Now func() time.Time
	// SeedTimeout: a node assigned pieces that has not asked for this
	// long loses its assignments.
	SeedTimeout time.Duration
	// SeedWindow is how many pieces one node is assigned and does not
	// hold yet, at most.
	SeedWindow int
	// MaxHolders is how many holders an answer names per piece.
	MaxHolders int
	// IdleTimeout: a download nobody asked about for this long is
	// forgotten.
	IdleTimeout time.Duration
	// MaxSwarms bounds the downloads tracked; the least recently asked
	// about is forgotten first.
	MaxSwarms int
}

// Tracker is safe for concurrent use.
type Tracker struct {
	cfg    Config
	mu     sync.Mutex
	swarms map[string]*swarm
}

// swarm is one download.
type swarm struct {
	pieces  int
	holders [][]string           // per piece, the nodes that hold it, in the order they said so
	has     map[string][]bool    // per node, the pieces it holds
	seeder  []string             // per piece, the node assigned to fetch it from the controller, "" none
	seen    map[string]time.Time // per node, when it last asked
	banned  map[string]bool      // nodes that served bad bytes of this download
	used    time.Time
}

// New returns a tracker.
func New(cfg Config) *Tracker {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SeedTimeout <= 0 {
		cfg.SeedTimeout = DefaultSeedTimeout
	}
	if cfg.SeedWindow <= 0 {
		cfg.SeedWindow = DefaultSeedWindow
	}
	if cfg.MaxHolders <= 0 {
		cfg.MaxHolders = DefaultMaxHolders
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxSwarms <= 0 {
		cfg.MaxSwarms = DefaultMaxSwarms
	}
	return &Tracker{cfg: cfg, swarms: map[string]*swarm{}}
}

// Piece is the answer for one piece.
type Piece struct {
	// Holders are the nodes to fetch it from, never the asker: those that
	// hold it, and the node fetching it from the controller.
	Holders []string
	// Seed: the asker should fetch it from the controller.
	Seed bool
}

// Ask records that node holds the pieces have of the download digest,
// which has pieces pieces (indexes out of range are ignored: the caller
// refuses them), and answers per piece. serves says whether node runs a
// piece server; one that does not is never a holder nor assigned pieces,
// and is told to fetch from the controller only pieces no other node
// holds or is fetching. A piece the asker holds gets an empty answer.
func (t *Tracker) Ask(digest, node string, pieces int, have []uint32, serves bool) []Piece {
	now := t.cfg.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	sw := t.swarms[digest]
	if sw == nil || sw.pieces != pieces {
		sw = &swarm{pieces: pieces, holders: make([][]string, pieces), has: map[string][]bool{},
			seeder: make([]string, pieces), seen: map[string]time.Time{}, banned: map[string]bool{}, used: now}
		t.swarms[digest] = sw
		t.evictLocked()
	}
	sw.used = now
	held := make([]bool, pieces)
	for _, i := range have {
		if int(i) < pieces {
			held[i] = true
		}
	}
	if serves && !sw.banned[node] {
		sw.seen[node] = now
		sw.setHeld(node, held)
	} else {
		sw.drop(node)
	}

	outstanding := 0 // pieces node is assigned and does not hold
	for i, s := range sw.seeder {
		if s == node && !held[i] {
			outstanding++
		}
	}
	out := make([]Piece, pieces)
	rot := rotation(node)
	for i := range pieces {
		if held[i] {
			continue
		}
		s := sw.seeder[i]
		if s != "" && (sw.banned[s] || now.Sub(sw.seen[s]) > t.cfg.SeedTimeout) {
			sw.seeder[i], s = "", "" // a seeder that stopped asking loses it
		}
		var holders []string
		if s != "" && s != node && !sw.holds(s, i) {
			holders = append(holders, s) // fetching it now: it serves it next
		}
		hs := sw.holders[i]
		for k := range hs {
			if len(holders) >= t.cfg.MaxHolders {
				break
			}
			// Each asker starts at another place in the list, so the
			// load of a popular piece spreads over its holders.
			h := hs[(int(rot)+i+k)%len(hs)]
			if h != node {
				holders = append(holders, h)
			}
		}
		out[i].Holders = holders
		switch {
		case s == node:
			out[i].Seed = true
		case s == "" && len(hs) == 0 && serves && !sw.banned[node] && outstanding < t.cfg.SeedWindow:
			sw.seeder[i] = node
			outstanding++
			out[i].Seed = true
		case s == "" && len(hs) == 0 && !serves:
			out[i].Seed = true // not a peer: it fetches what no peer has
		}
	}
	return out
}

// rotation is where in a piece's holder list node's answers start.
func rotation(node string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(node)) // never fails
	return h.Sum32()
}

// setHeld makes node's holdings exactly held.
func (sw *swarm) setHeld(node string, held []bool) {
	old := sw.has[node]
	for i := range sw.pieces {
		was := old != nil && old[i]
		switch {
		case held[i] && !was:
			sw.holders[i] = append(sw.holders[i], node)
		case !held[i] && was:
			sw.holders[i] = slices.DeleteFunc(sw.holders[i], func(h string) bool { return h == node })
		}
		if held[i] && sw.seeder[i] == node {
			sw.seeder[i] = "" // done: it is a holder now
		}
	}
	sw.has[node] = held
}

func (sw *swarm) holds(node string, i int) bool {
	h := sw.has[node]
	return h != nil && h[i]
}

// drop forgets node's holdings and assignments in this download.
func (sw *swarm) drop(node string) {
	if old := sw.has[node]; old != nil {
		for i, had := range old {
			if had {
				sw.holders[i] = slices.DeleteFunc(sw.holders[i], func(h string) bool { return h == node })
			}
		}
	}
	for i, s := range sw.seeder {
		if s == node {
			sw.seeder[i] = ""
		}
	}
	delete(sw.has, node)
	delete(sw.seen, node)
}

// Forget drops node from every download: its stream closed, so its piece
// server is not to be named to peers.
func (t *Tracker) Forget(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, sw := range t.swarms {
		sw.drop(node)
	}
}

// Ban drops node from the download digest for as long as the tracker
// keeps it: a peer reported that it served bad bytes of it.
func (t *Tracker) Ban(digest, node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sw := t.swarms[digest]; sw != nil {
		sw.drop(node)
		sw.banned[node] = true
	}
}

// Known reports whether node holds or was assigned pieces of the
// download digest, or was banned from it: whether the tracker could have
// named it to a peer.
func (t *Tracker) Known(digest, node string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	sw := t.swarms[digest]
	if sw == nil {
		return false
	}
	if sw.banned[node] || sw.has[node] != nil {
		return true
	}
	return slices.Contains(sw.seeder, node)
}

// expireLocked forgets downloads idle for IdleTimeout.
func (t *Tracker) expireLocked(now time.Time) {
	for d, sw := range t.swarms {
		if now.Sub(sw.used) > t.cfg.IdleTimeout {
			delete(t.swarms, d)
		}
	}
}

// evictLocked forgets the least recently asked about downloads beyond
// MaxSwarms.
func (t *Tracker) evictLocked() {
	for len(t.swarms) > t.cfg.MaxSwarms {
		var oldest string
		var at time.Time
		for d, sw := range t.swarms {
			if oldest == "" || sw.used.Before(at) {
				oldest, at = d, sw.used
			}
		}
		delete(t.swarms, oldest)
	}
}
