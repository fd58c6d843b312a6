package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Network is a private IPv4 /24 built for one test from Linux network
// namespaces: a switch namespace holding a bridge, one namespace per host
// (AddHost) plugged into the bridge with a veth pair, and an uplink veth
// from the test's own namespace, so the test process (ferryctl, the
// controller's readiness check) reaches every host. Nothing is routed
// beyond the /24: the hosts' traffic stays in the test's namespaces.
//
// Daemons run in a host with Host.Prefix (ip netns exec NS); Host.Cut and
// Host.Restore add and remove nftables rules in a host's namespace, so a
// test can break one TCP flow while everything else keeps working.
//
// Create the network before the harness (e2e.New): cleanups run last
// registered first, so the harness stops the daemons before the
// namespaces they live in are deleted.
type Network struct {
	t      testing.TB
	name   string       // namespace name prefix: ferrye2e-PID-TAG
	prefix netip.Prefix // e.g. 10.213.7.0/24
	sw     string       // the switch namespace
	uplink string       // the test side's veth, in the test's namespace
	gw     netip.Addr   // the uplink's address (.254)
	ip     string       // path of the ip command
	nft    string       // path of the nft command

	mu    sync.Mutex
	hosts []*Host
	ns    []string // every namespace created, for cleanup
}

// Host is one network namespace on a Network, with one address.
type Host struct {
	n    *Network
	Name string     // the name given to AddHost
	NS   string     // the namespace, for ip netns exec
	IP   netip.Addr // its address on the network

	mu sync.Mutex
	fw bool // the firewall table exists
}

// CutMode says how Host.Cut breaks a TCP flow.
type CutMode string

const (
	// CutDrop silently drops the peer's packets to the port and the
	// host's replies: a partition. Neither side is told; each notices
	// only through its own timeouts.
	CutDrop CutMode = "drop"
	// CutReset answers the peer's packets to the port with a TCP reset,
	// as a firewall with a reject policy does: the peer learns at once
	// that its connection is gone and its reconnects are refused, while
	// the host itself is not told.
	CutReset CutMode = "reset"
)

// nsPrefix starts every namespace a Network creates; the test process's
// PID follows, so namespaces left behind by a killed test run can be told
// apart from those of a running one and swept.
const nsPrefix = "ferrye2e-"

// fwTable is the nftables table Cut manages in a host's namespace.
const fwTable = "ferry_e2e"

// NewNetwork builds the switch and uplink of a new network. It skips t
// when the test cannot build one: not root, no ip or nft command, or
// network namespaces refused.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	return newNetwork(t, true)
}

// NewNetworkNoCut is NewNetwork for a test that never calls Host.Cut or
// Host.Restore (a benchmark shaping a link with tc): it does not need the
// nft command.
func NewNetworkNoCut(t testing.TB) *Network {
	t.Helper()
	return newNetwork(t, false)
}

func newNetwork(t testing.TB, cuts bool) *Network {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("network namespace test skipped: needs Linux")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespace test skipped: needs root to create network namespaces and nftables rules (CI runs as root)")
	}
	ipCmd, nftCmd := findTool("ip"), findTool("nft")
	if ipCmd == "" {
		t.Skip("network namespace test skipped: needs the ip command (install iproute2)")
	}
	if cuts && nftCmd == "" {
		t.Skip("network namespace test skipped: needs the nft command (install nftables)")
	}
	sweepStaleNamespaces(t, ipCmd)

	tag := make([]byte, 4)
	if _, err := rand.Read(tag); err != nil {
		t.Fatal(err)
	}
	hexTag := hex.EncodeToString(tag)
	n := &Network{
		t:      t,
		name:   fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), hexTag),
		uplink: "fe" + hexTag, // interface names are at most 15 bytes
		ip:     ipCmd,
		nft:    nftCmd,
	}
	n.prefix = n.pickPrefix()
	n.gw = lastHost(n.prefix)
	n.sw = n.name + "-sw"
	t.Cleanup(n.cleanup)

	if out, err := command(nil, n.ip, "netns", "add", n.sw); err != nil {
		t.Skipf("network namespace test skipped: ip netns add failed (namespaces not permitted here?): %v: %s", err, out)
	}
	n.addNS(n.sw)
	n.must(n.ip, "-n", n.sw, "link", "add", "br0", "type", "bridge")
	n.must(n.ip, "-n", n.sw, "link", "set", "br0", "up")
	// The uplink: created in the test's namespace, its peer moved into the
	// switch.
	n.must(n.ip, "link", "add", n.uplink, "type", "veth", "peer", "name", "up0", "netns", n.sw)
	n.must(n.ip, "-n", n.sw, "link", "set", "up0", "master", "br0", "up")
	n.must(n.ip, "addr", "add", netip.PrefixFrom(n.gw, n.prefix.Bits()).String(), "dev", n.uplink)
	n.must(n.ip, "link", "set", n.uplink, "up")
	return n
}

// Prefix is the network's /24.
func (n *Network) Prefix() netip.Prefix { return n.prefix }

// Gateway is the address of the test's own end of the network.
func (n *Network) Gateway() netip.Addr { return n.gw }

// AddHost creates a namespace named for name, plugs it into the bridge and
// gives it the next free address (.1, .2, ...).
func (n *Network) AddHost(name string) *Host {
	n.t.Helper()
	n.mu.Lock()
	idx := len(n.hosts) + 1
	n.mu.Unlock()
	ip := n.prefix.Addr()
	for range idx {
		ip = ip.Next()
	}
	if ip == n.gw {
		n.t.Fatalf("network %s is full", n.prefix)
	}
	h := &Host{n: n, Name: name, NS: n.name + "-" + name, IP: ip}
	n.must(n.ip, "netns", "add", h.NS)
	n.addNS(h.NS)
	port := "h" + strconv.Itoa(idx)
	n.must(n.ip, "-n", n.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
	n.must(n.ip, "-n", n.sw, "link", "set", port, "master", "br0", "up")
	n.must(n.ip, "-n", h.NS, "link", "set", "lo", "up")
	n.must(n.ip, "-n", h.NS, "addr", "add", netip.PrefixFrom(ip, n.prefix.Bits()).String(), "dev", "eth0")
	n.must(n.ip, "-n", h.NS, "link", "set", "eth0", "up")
	n.mu.Lock()
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	return h
}

// Prefix is the command prefix that runs a program in the host's
// namespace, for ControllerOptions.Prefix and AgentOptions.Prefix.
func (h *Host) Prefix() []string { return []string{h.n.ip, "netns", "exec", h.NS} }

// Addr is the host's address with port, e.g. for a listen flag.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP.String(), strconv.Itoa(port)) }

// Cut breaks TCP between peer and the host's port: the packets peer sends
// to it are dropped or answered with a reset (mode), and with CutDrop the
// host's packets back to peer from that port are dropped too. Other
// traffic between them (another port, UDP) still flows. Restore undoes it.
func (h *Host) Cut(peer netip.Addr, port int, mode CutMode) {
	h.n.t.Helper()
	h.ensureFirewall()
	h.n.must(h.n.ip, "netns", "exec", h.NS, h.n.nft, "add", "element", "inet", fwTable, h.setFor(mode), element(peer, port))
}

// Restore removes a rule Cut added.
func (h *Host) Restore(peer netip.Addr, port int, mode CutMode) {
	h.n.t.Helper()
	h.n.must(h.n.ip, "netns", "exec", h.NS, h.n.nft, "delete", "element", "inet", fwTable, h.setFor(mode), element(peer, port))
}

// Ruleset is the host's nftables ruleset, for failure messages.
func (h *Host) Ruleset() string {
	out, err := command(nil, h.n.ip, "netns", "exec", h.NS, h.n.nft, "list", "ruleset")
	if err != nil {
		return fmt.Sprintf("nft list ruleset: %v: %s", err, out)
	}
	return out
}

func (h *Host) setFor(mode CutMode) string {
	switch mode {
	case CutDrop:
		return "cut_drop"
	case CutReset:
		return "cut_reset"
	}
	h.n.t.Fatalf("cut mode %q not known; use CutDrop or CutReset", mode)
	return ""
}

func element(peer netip.Addr, port int) string {
	return fmt.Sprintf("{ %s . %d }", peer, port)
}

// ensureFirewall creates the host's table: two sets of (peer, port) pairs
// and the rules that drop or reset what matches them.
func (h *Host) ensureFirewall() {
	h.n.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fw {
		return
	}
	if h.n.nft == "" {
		h.n.t.Fatal("Host.Cut needs the nft command: build the network with NewNetwork, not NewNetworkNoCut")
	}
	script := `table inet ` + fwTable + ` {
	set cut_drop { type ipv4_addr . inet_service; }
	set cut_reset { type ipv4_addr . inet_service; }
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr . tcp dport @cut_drop counter drop
		ip saddr . tcp dport @cut_reset counter reject with tcp reset
	}
	chain output {
		type filter hook output priority filter; policy accept;
		ip daddr . tcp sport @cut_drop counter drop
	}
}
`
	if out, err := command([]byte(script), h.n.ip, "netns", "exec", h.NS, h.n.nft, "-f", "-"); err != nil {
		h.n.t.Fatalf("nftables in namespace %s: %v: %s", h.NS, err, out)
	}
	h.fw = true
}

// pickPrefix chooses a random 10.x.y.0/24 that overlaps no route of the
// test's namespace, so the uplink cannot capture anyone else's traffic.
func (n *Network) pickPrefix() netip.Prefix {
	n.t.Helper()
	out, err := command(nil, n.ip, "-4", "-o", "route", "show", "table", "all")
	if err != nil {
		n.t.Fatalf("ip route show: %v: %s", err, out)
	}
	var routes []netip.Prefix
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			routes = append(routes, p)
		}
	}
	b := make([]byte, 2)
	for range 50 {
		if _, err := rand.Read(b); err != nil {
			n.t.Fatal(err)
		}
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100 + b[0]%150, b[1], 0}), 24)
		free := true
		for _, r := range routes {
			if r.Bits() > 0 && r.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p
		}
	}
	n.t.Fatalf("no free 10.x.y.0/24 for a test network after 50 tries; routes: %v", routes)
	return netip.Prefix{}
}

func lastHost(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	a[3] = 254
	return netip.AddrFrom4(a)
}

func (n *Network) addNS(ns string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ns = append(n.ns, ns)
}

func (n *Network) must(argv ...string) {
	n.t.Helper()
	if out, err := command(nil, argv...); err != nil {
		n.t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

// cleanup deletes every namespace (which removes their veths and rules)
// and the uplink.
func (n *Network) cleanup() {
	n.mu.Lock()
	namespaces := append([]string(nil), n.ns...)
	n.mu.Unlock()
	for i := len(namespaces) - 1; i >= 0; i-- {
		if out, err := command(nil, n.ip, "netns", "delete", namespaces[i]); err != nil {
			n.t.Errorf("delete network namespace %s: %v: %s", namespaces[i], err, out)
		}
	}
	// The uplink goes with its peer in the switch namespace; delete it
	// explicitly in case the switch was never populated.
	if _, err := net.InterfaceByName(n.uplink); err == nil {
		if out, err := command(nil, n.ip, "link", "delete", n.uplink); err != nil {
			n.t.Errorf("delete uplink %s: %v: %s", n.uplink, err, out)
		}
	}
}

// sweepStaleNamespaces deletes namespaces left by test processes that
// are gone (a test binary killed before its cleanups ran).
func sweepStaleNamespaces(t testing.TB, ipCmd string) {
	out, err := command(nil, ipCmd, "netns", "list")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // its test is still running
		}
		if out, err := command(nil, ipCmd, "netns", "delete", f[0]); err != nil {
			t.Logf("sweep stale network namespace %s: %v: %s", f[0], err, out)
		} else {
			t.Logf("deleted network namespace %s left by test process %d", f[0], pid)
		}
	}
}

// findTool returns the path of an administration command, looking in the
// sbin folders too: they are often missing from PATH, even for root.
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// command runs a short command (ip, nft) with stdin and returns its
// combined output.
func command(stdin []byte, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
