package e2e

import (
	"net"
	"strconv"
)

// FreePort returns a port on host that is free for both TCP and UDP at the
// time of the call, for listeners that need a fixed port across restarts
// (gossip: memberlist refuses a member that comes back on a new address
// while its old one is still thought alive). Listeners that may change
// port between runs should bind port 0 instead, which cannot race.
// The port is checked in the test's own network namespace; for a daemon
// started in another one (Prefix: ip netns exec), it is only a likely
// free port there.
func (h *Harness) FreePort(host string) int {
	h.t.Helper()
	for range 20 {
		tl, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			h.t.Fatalf("find a free port on %s: %v", host, err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		tl.Close()
		if err != nil {
			continue // taken for UDP: try another
		}
		ul.Close()
		return port
	}
	h.t.Fatalf("no port on %s free for both TCP and UDP after 20 tries", host)
	return 0
}
