package fleettest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// peer is a second controller of the installation: its own data dir,
// holding the first one's CA (ca.crt and ca.key, the documented step that
// makes a controller part of an installation) and, on bbolt, a copy of its
// store, so it knows the enrolled nodes: the copy stands in for the store
// that controllers on etcd share (there the peer joins the same prefix).
type peer struct {
	t      *testing.T
	ctl    *controller.Controller
	admin  *grpc.ClientConn
	cancel context.CancelFunc
	done   chan error
}

// addPeer stops the fleet's controller, copies its CA (and on bbolt its
// store) into a new data dir, starts the fleet's controller again on its address and
// the peer on grpcAddr, and returns the peer.
func (f *fleet) addPeer(grpcAddr string) *peer {
	f.t.Helper()
	f.cfg.GRPCAddr = f.ctl.GRPCAddr()
	f.stopController()
	dir := filepath.Join(f.dir, "controller-b")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	files := []string{"ca.crt", "ca.key", "ferry.db"}
	onEtcd := f.cfg.Store.Backend == controller.StoreEtcd
	if onEtcd {
		files = files[:2] // the store is shared already
	}
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(f.cfg.DataDir, name))
		if err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	f.startController()
	cfg := f.cfg
	cfg.DataDir, cfg.GRPCAddr, cfg.HTTPAddr = dir, grpcAddr, "127.0.0.1:0"
	if onEtcd {
		cfg.ControllerID, cfg.Join = "controller-b", true
	}
	ctl, err := controller.New(cfg)
	if err != nil {
		f.t.Fatalf("start the second controller: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{t: f.t, ctl: ctl, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- ctl.Run(ctx) }()
	f.t.Cleanup(p.stop)
	tlsConf, err := ctl.AdminTLS()
	if err != nil {
		f.t.Fatal(err)
	}
	if p.admin, err = grpc.NewClient(ctl.GRPCAddr(), rpc.DialOptions(tlsConf)...); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { p.admin.Close() })
	return p
}

func (p *peer) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	if err := <-p.done; err != nil {
		p.t.Errorf("second controller Run: %v", err)
	}
	p.cancel = nil
}

// An agent with two controllers, given as two addresses or as one name
// that resolves to both, is connected to one; that one stops, and the
// agent moves to the other within seconds, says so in its status (what
// `ferry-agent doctor` reads), and keeps heartbeating there. (The agent's
// own tests check what its log says about the move.)
func TestAgentMovesToAnotherController(t *testing.T) {
	if l, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		t.Skipf("this host has no 127.0.0.2 for a second controller: %v", err)
	} else {
		l.Close()
	}
	for _, byName := range []bool{false, true} {
		name := "two addresses"
		if byName {
			name = "one name with two addresses"
		}
		t.Run(name, func(t *testing.T) {
			f := newFleet(t, nil)
			addrA := f.ctl.GRPCAddr()
			_, port, _ := net.SplitHostPort(addrA)
			addrB := net.JoinHostPort("127.0.0.2", port)
			// Enrolled with both addresses while B is not up yet: the
			// enrollment goes through A, and records both for run.
			a := &testAgent{t: t, id: "n1", stateDir: filepath.Join(f.dir, "agents", "n1"), proxy: newProxy(t, addrA)}
			tok := f.token("prod", 1)
			info, err := enroll.Enroll(context.Background(), enroll.Options{Controllers: []string{addrB + "," + addrA}, Token: tok.Secret, CAPin: tok.CaPin, NodeID: a.id, StateDir: a.stateDir})
			if err != nil {
				t.Fatalf("enroll with %s (down) and %s: %v", addrB, addrA, err)
			}
			if info.Controller != addrA || !slices.Equal(info.Controllers, []string{addrB, addrA}) {
				t.Fatalf("enrollment recorded controller %q, controllers %v; want %s through which it enrolled, and both", info.Controller, info.Controllers, addrA)
			}
			f.agents[a.id] = a
			b := f.addPeer(addrB)

			f.startWith(a, func(c *agent.Config) {
				c.Controllers = nil // the ones recorded at enrollment
				if byName {
					c.Controllers = []string{net.JoinHostPort("ferry.test", port)}
					c.Resolve = func(_ context.Context, host string) ([]string, error) {
						if host != "ferry.test" {
							return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
						}
						return []string{"127.0.0.1", "127.0.0.2"}, nil
					}
				}
			})

			// Which controller holds the stream: the agent's status says.
			st := waitStatus(t, a, func(st *agentstatus.Status) bool { return st.Connected }, "connected")
			first, other, stopFirst, otherAdmin := addrA, addrB, f.stopController, b.admin
			if strings.Contains(st.Controller, addrB) {
				first, other, stopFirst, otherAdmin = addrB, addrA, b.stop, f.admin
			}
			want := []string{addrB, addrA}
			if byName {
				want = []string{net.JoinHostPort("ferry.test", port)}
			}
			if !slices.Equal(st.Controllers, want) {
				t.Errorf("status lists controllers %v, want the configured %v", st.Controllers, want)
			}

			stopFirst()
			moved := time.Now()
			st = waitStatus(t, a, func(st *agentstatus.Status) bool {
				return st.Connected && strings.Contains(st.Controller, other)
			}, "connected to "+other)
			t.Logf("the agent was connected to %s %v after %s stopped", st.Controller, time.Since(moved).Round(time.Millisecond), first)

			// The other controller sees it healthy, and its heartbeats go on.
			n := waitNode(t, otherAdmin, "n1", func(n *ferryv1.Node) bool { return n.GetConnected() && n.GetState() == healthy })
			since := n.GetLastHeartbeat().AsTime()
			waitNode(t, otherAdmin, "n1", func(n *ferryv1.Node) bool {
				return n.GetLastHeartbeat().AsTime().After(since) && n.GetState() == healthy
			})
		})
	}
}

// waitStatus waits, a few seconds at most, for the agent's status.json to
// satisfy ok.
func waitStatus(t *testing.T, a *testAgent, ok func(*agentstatus.Status) bool, what string) *agentstatus.Status {
	t.Helper()
	var st *agentstatus.Status
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st, err = agentstatus.Read(a.stateDir); err == nil && ok(st) {
			return st
		}
	}
	t.Fatalf("agent %s: status not %s within 10s: %+v (%v)", a.id, what, st, err)
	return nil
}

// waitNode waits, a few seconds at most, for a controller's view of a
// node to satisfy ok.
func waitNode(t *testing.T, admin *grpc.ClientConn, id string, ok func(*ferryv1.Node) bool) *ferryv1.Node {
	t.Helper()
	var last *ferryv1.Node
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := ferryv1.NewNodeServiceClient(admin).ListNodes(context.Background(), &ferryv1.ListNodesRequest{})
		if err != nil {
			continue // the controller may still be starting
		}
		for _, n := range resp.GetNodes() {
			if n.GetId() == id {
				last = n
				if ok(n) {
					return n
				}
			}
		}
	}
	t.Fatalf("node %s: not as wanted within 10s; last seen %v", id, last)
	return nil
}
