package replica

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

// Peers lists the other controllers that are up now (the controller gives
// the cluster's membership, package cluster).
type Peers interface {
	Peers() []Peer
}

// Static is a fixed list of peers, for tests.
type Static []Peer

// Peers returns the list.
func (s Static) Peers() []Peer { return s }
