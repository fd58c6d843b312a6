package gossip

import (
	"fmt"
	"net"
	"reflect"
	"sync"
	"time"
	"unsafe"

	"github.com/hashicorp/memberlist"
)

// memberlist v0.7.0 keeps each member's state (alive, suspect, dead, left)
// in an unexported nodeState whose State field shadows Node.State, so the
// *Node values its API hands out (Members, event callbacks) always say
// StateAlive (hashicorp/memberlist#266). Suspicion, and dead versus left,
// are only in its internal table. nodeTable reads that table the way
// memberlist does itself: under memberlist's own nodeLock, through a mirror
// of nodeState whose layout newNodeTable checks field by field, so a
// memberlist upgrade that changes the layout fails Start (and this package's
// tests) instead of misreading memory.

// nodeStateMirror must match memberlist's nodeState exactly.
type nodeStateMirror struct {
	memberlist.Node
	Incarnation uint32
	State       memberlist.NodeStateType
	StateChange time.Time
}

// nodeTable is a read-only view of memberlist's member table.
type nodeTable struct {
	lock  *sync.RWMutex
	nodes *[]*nodeStateMirror
}

// rawNode is what a sync needs of one member, copied under nodeLock.
type rawNode struct {
	name   string
	addr   net.IP
	port   uint16
	meta   []byte
	state  memberlist.NodeStateType
	change time.Time
}

func newNodeTable(ml *memberlist.Memberlist) (*nodeTable, error) {
	v := reflect.ValueOf(ml).Elem()
	lockField := v.FieldByName("nodeLock")
	nodesField := v.FieldByName("nodes")
	if !lockField.IsValid() || lockField.Type() != reflect.TypeFor[sync.RWMutex]() {
		return nil, errLayout("Memberlist.nodeLock is not a sync.RWMutex")
	}
	if !nodesField.IsValid() || nodesField.Kind() != reflect.Slice ||
		nodesField.Type().Elem().Kind() != reflect.Pointer {
		return nil, errLayout("Memberlist.nodes is not a slice of pointers")
	}
	if err := sameLayout(nodesField.Type().Elem().Elem(), reflect.TypeFor[nodeStateMirror]()); err != nil {
		return nil, err
	}
	// memberlist has no read-only view of its node table; the checks above
	// make sure both fields have the layout these casts assume.
	//nolint:gosec // G103: the layout is verified by reflection just above.
	return &nodeTable{
		lock:  (*sync.RWMutex)(unsafe.Pointer(lockField.UnsafeAddr())),
		nodes: (*[]*nodeStateMirror)(unsafe.Pointer(nodesField.UnsafeAddr())),
	}, nil
}

func sameLayout(got, want reflect.Type) error {
	if got.Kind() != reflect.Struct || got.Size() != want.Size() || got.NumField() != want.NumField() {
		return errLayout(fmt.Sprintf("nodeState is %s of %d bytes, want a struct of %d bytes", got.Kind(), got.Size(), want.Size()))
	}
	for i := range want.NumField() {
		g, w := got.Field(i), want.Field(i)
		if g.Name != w.Name || g.Type != w.Type || g.Offset != w.Offset {
			return errLayout(fmt.Sprintf("nodeState field %d is %s %s at %d, want %s %s at %d",
				i, g.Name, g.Type, g.Offset, w.Name, w.Type, w.Offset))
		}
	}
	return nil
}

func errLayout(detail string) error {
	return fmt.Errorf("gossip: this memberlist version's internal member table is not the one shared/gossip was written for (%s); update nodeStateMirror in shared/gossip/table.go", detail)
}

// read copies the table into buf (reused between calls) under nodeLock.
// It must never be called from a memberlist callback: memberlist holds the
// lock while it calls them.
func (t *nodeTable) read(buf []rawNode) []rawNode {
	buf = buf[:0]
	t.lock.RLock()
	defer t.lock.RUnlock()
	for _, ns := range *t.nodes {
		buf = append(buf, rawNode{
			name:   ns.Name,
			addr:   ns.Addr,
			port:   ns.Port,
			meta:   ns.Meta,
			state:  ns.State,
			change: ns.StateChange,
		})
	}
	return buf
}
