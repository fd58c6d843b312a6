package gossip

import (
	"sync"

	"github.com/hashicorp/memberlist"
)

// metaDelegate hands memberlist this member's encoded Meta. The rest of the
// Delegate interface is unused: Ferry keeps application data off gossip.
type metaDelegate struct {
	mu   sync.Mutex
	meta []byte
}

func (d *metaDelegate) set(meta []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.meta = meta
}

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		// Encode already enforces MetaMaxSize; this guards a smaller limit.
		return nil
	}
	return d.meta
}

func (*metaDelegate) NotifyMsg([]byte)                           {}
func (*metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (*metaDelegate) LocalState(join bool) []byte                { return nil }
func (*metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// wakeDelegate turns memberlist's join, leave and update callbacks into a
// prompt re-read of its table. The callbacks run with memberlist's node lock
// held and carry no trustworthy state (see table.go), so they only signal.
type wakeDelegate struct {
	wake chan<- struct{}
}

func (d wakeDelegate) signal() {
	select {
	case d.wake <- struct{}{}:
	default: // a re-read is already pending
	}
}

func (d wakeDelegate) NotifyJoin(*memberlist.Node)   { d.signal() }
func (d wakeDelegate) NotifyLeave(*memberlist.Node)  { d.signal() }
func (d wakeDelegate) NotifyUpdate(*memberlist.Node) { d.signal() }

// admitDelegate puts Config.Admit in front of memberlist's alive messages.
// This member's own name is always admitted: memberlist announces it too.
type admitDelegate struct {
	self  string
	admit func(name, addr string) error
}

func (d admitDelegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.self {
		return nil
	}
	return d.admit(n.Name, n.Address())
}
