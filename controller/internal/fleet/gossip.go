package fleet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// One node must never speak for another in gossip. Any holder of the gossip
// key can announce a member under any name at any address, so the
// controller's member records a node alive only at the address the node's
// own certificate-authenticated stream vouches for: the IP the stream
// comes from and the port its hello names (the port is the node's to
// choose, the IP is not). The address of the last stream is kept in the
// node's record, so it holds across controller restarts. A node whose
// gossip address is not on the IP it reaches the controller from (NAT, a
// second interface) is not seen by the controller's gossip; its state then
// comes from its stream alone.

// GossipAddr is the gossip address a stream vouches for: the host of peer
// (the stream's remote address) with the port of asserted (what the hello
// named). It is "" when asserted names no usable port or peer is not
// host:port.
func GossipAddr(peer, asserted string) string {
	_, port, err := net.SplitHostPort(asserted)
	if err != nil {
		return ""
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return ""
	}
	host, _, err := net.SplitHostPort(peer)
	if err != nil || host == "" {
		return ""
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	return net.JoinHostPort(host, port)
}

// AdmitGossip says whether gossip may show node name alive at addr
// ("host:port"): only an enrolled, not removed node, at the address its
// last stream vouched for. The error says why not (memberlist logs it).
func (r *Registry) AdmitGossip(name, addr string) error {
	r.mu.RLock()
	e, ok := r.nodes[name]
	var removed bool
	var want string
	if ok {
		removed, want = e.rec.Removed, e.rec.GossipAddress
	}
	r.mu.RUnlock()
	switch {
	case !ok:
		return fmt.Errorf("%q is not an enrolled node", name)
	case removed:
		return fmt.Errorf("node %s was removed", name)
	case want == "":
		return fmt.Errorf("node %s has not named its gossip port on a stream yet", name)
	case !sameAddr(want, addr):
		return fmt.Errorf("node %s gossips at %s by its stream, not at %s", name, want, addr)
	}
	return nil
}

func sameAddr(a, b string) bool {
	pa, errA := netip.ParseAddrPort(a)
	pb, errB := netip.ParseAddrPort(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return pa.Addr().Unmap() == pb.Addr().Unmap() && pa.Port() == pb.Port()
}

// errBroadcastMissed ends a stream whose send queue was full when a
// broadcast had to reach it: the agent reconnects and its welcome carries
// what it missed.
var errBroadcastMissed = errors.New("the stream's send queue was full; reconnect to receive the current state in the welcome")

// Broadcast queues msg on every open stream and returns how many it
// reached. A stream whose queue is full is ended instead (its agent
// reconnects at once and gets the state in its welcome), so no connected
// agent silently misses msg.
func (r *Registry) Broadcast(msg *ferryv1.ConnectResponse) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sent := 0
	for _, e := range r.nodes {
		s := e.session
		if s == nil || s.ctx.Err() != nil {
			continue
		}
		select {
		case s.send <- msg:
			sent++
		default:
			s.cancel(errBroadcastMissed)
		}
	}
	return sent
}
