// What admins change on a node after enrollment (labels, group, purging
// its record), and the pages and compact states large fleets are listed
// and watched with.

package fleet

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Update changes a node's record with change and writes ev to the audit
// log in the same store transaction. A removed node cannot be changed.
func (r *Registry) Update(nodeID string, change func(*store.NodeRecord) error, ev *ferryv1.AuditEvent) (*ferryv1.Node, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.entryLocked(nodeID)
	if err != nil {
		return nil, err
	}
	if e.rec.Removed {
		return nil, fmt.Errorf("node %s: %w; re-enroll it, or purge it with `ferryctl node remove %s --purge`", nodeID, ErrRemoved, nodeID)
	}
	rec, err := r.cfg.Store.UpdateNode(nodeID, change, ev)
	if err != nil {
		return nil, err
	}
	e.rec = rec
	r.changed()
	return r.nodeLocked(e, r.cfg.Now()), nil
}

// Purge deletes a node's record, writing ev to the audit log in the same
// store transaction, and forgets the node: its stream is closed and its
// certificate refused (it is no longer enrolled).
func (r *Registry) Purge(nodeID string, ev *ferryv1.AuditEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.entryLocked(nodeID)
	if err != nil {
		return err
	}
	if err := r.cfg.Store.DeleteNode(nodeID, ev); err != nil {
		return err
	}
	r.disconnectLocked(e)
	delete(r.nodes, nodeID)
	r.changed()
	return nil
}

func (r *Registry) entryLocked(nodeID string) (*entry, error) {
	e, ok := r.nodes[nodeID]
	if !ok {
		return nil, fmt.Errorf("node %q: %w; list nodes with `ferryctl nodes`", nodeID, store.ErrNotFound)
	}
	return e, nil
}

// disconnectLocked closes a removed or purged node's stream and makes
// gossip forget it.
func (r *Registry) disconnectLocked(e *entry) {
	if e.session != nil {
		e.session.cancel(ErrRemoved)
		e.session = nil
	}
	if f, ok := r.cfg.Gossip.(interface{ Forget(string) }); ok {
		f.Forget(e.rec.ID)
	}
}

// Page returns up to limit nodes matching f with IDs after the cursor
// after, in ID order, stopping before their encoded size passes budget
// bytes (a page holds at least one node). next is the cursor of the next
// page, "" when no node is left.
func (r *Registry) Page(f Filter, after string, limit, budget int) (nodes []*ferryv1.Node, next string) {
	now := r.cfg.Now()
	r.mu.RLock()
	snap := make([]entry, 0, len(r.nodes))
	for id, e := range r.nodes {
		if id > after {
			snap = append(snap, *e)
		}
	}
	r.mu.RUnlock()
	slices.SortFunc(snap, func(a, b entry) int { return strings.Compare(a.rec.ID, b.rec.ID) })
	size := 0
	for i := range snap {
		n := r.nodeLocked(&snap[i], now)
		if !f.match(n) {
			continue
		}
		sz := proto.Size(n)
		if len(nodes) == limit || len(nodes) > 0 && size+sz > budget {
			return nodes, nodes[len(nodes)-1].Id
		}
		nodes = append(nodes, n)
		size += sz
	}
	return nodes, ""
}

// Status is the part of a node a watch reports.
type Status struct {
	ID, Group string
	State     ferryv1.NodeState
	Reason    string
	Connected bool
}

// Statuses returns the state of every node matching f, sorted by ID,
// without building whole node messages (watches ask every second).
func (r *Registry) Statuses(f Filter) []Status {
	now := r.cfg.Now()
	r.mu.RLock()
	out := make([]Status, 0, len(r.nodes))
	for _, e := range r.nodes {
		state, reason := r.cfg.Evaluate(now, r.signalsLocked(e, now))
		if f.Match(e.rec.Group, state) {
			out = append(out, Status{ID: e.rec.ID, Group: e.rec.Group, State: state, Reason: reason, Connected: e.session != nil})
		}
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.ID, b.ID) })
	return out
}
