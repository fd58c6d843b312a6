package fleettest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/controller/controller"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// fleet is a controller and its agents in this test process.
type fleet struct {
	t       *testing.T
	dir     string
	cfg     controller.Config // what the controller was started with
	ctl     *controller.Controller
	cancel  context.CancelFunc
	done    chan error
	admin   *grpc.ClientConn
	agents  map[string]*testAgent
	hbEvery time.Duration
	gossip  bool
}

type testAgent struct {
	t           *testing.T
	id          string
	metricsAddr string // --metrics-listen, "" = off
	stateDir    string
	proxy       *proxy
	cancel      context.CancelFunc
	done        chan error

	// configure, when set, adjusts the agent's config before it starts.
	configure func(*agent.Config)
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// storeEnv names the store the suite's controllers use: FERRY_TEST_STORE=etcd
// runs every fleet whose test does not pick a store itself on the shared
// embedded etcd (make test runs the package once more that way); unset or
// bbolt, they use ferry.db in their data dir.
const storeEnv = "FERRY_TEST_STORE"

func TestMain(m *testing.M) {
	switch v := os.Getenv(storeEnv); v {
	case "", controller.StoreBbolt, controller.StoreEtcd:
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: use bbolt or etcd\n", storeEnv, v)
		os.Exit(2)
	}
	etcdtest.Main(m)
}

// onEtcd reports whether the suite runs on the etcd store.
func onEtcd() bool { return os.Getenv(storeEnv) == controller.StoreEtcd }

// newFleet starts a controller on loopback with a short heartbeat interval.
func newFleet(t *testing.T, mod func(*controller.Config)) *fleet {
	t.Helper()
	f := &fleet{t: t, dir: t.TempDir(), agents: map[string]*testAgent{}, hbEvery: 200 * time.Millisecond}
	cfg := controller.Config{
		DataDir:           filepath.Join(f.dir, "controller"),
		GRPCAddr:          "127.0.0.1:0",
		HTTPAddr:          "127.0.0.1:0",
		HeartbeatInterval: f.hbEvery,
		Logger:            testLogger(),
	}
	if mod != nil {
		mod(&cfg)
	}
	if onEtcd() && cfg.Store.Backend == "" {
		// A prefix of its own on the shared etcd, kept in f.cfg so a
		// restarted controller finds its store again.
		eps, prefix := etcdtest.Shared(t)
		cfg.Store.Backend = controller.StoreEtcd
		cfg.Store.Etcd.Endpoints = eps
		cfg.Store.Etcd.Prefix = prefix
	}
	f.hbEvery = cfg.HeartbeatInterval // a test may ask for another
	f.gossip = cfg.GossipAddr != ""
	f.cfg = cfg
	f.startController()
	tlsConf, err := f.ctl.AdminTLS()
	if err != nil {
		t.Fatal(err)
	}
	f.admin = f.dial(tlsConf)
	t.Cleanup(f.stop)
	return f
}

func (f *fleet) startController() {
	f.t.Helper()
	ctl, err := controller.New(f.cfg)
	if err != nil {
		f.t.Fatalf("start controller: %v", err)
	}
	f.ctl = ctl
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.done = make(chan error, 1)
	go func() { f.done <- ctl.Run(ctx) }()
}

// restartController stops the controller and starts a new one on the same
// data dir and gRPC address, as a restart of its process would; agents and
// the admin connection reconnect.
func (f *fleet) restartController() {
	f.t.Helper()
	f.cfg.GRPCAddr = f.ctl.GRPCAddr()
	f.stopController()
	f.startController()
}

func (f *fleet) dial(tlsConf *tls.Config) *grpc.ClientConn {
	conn, err := grpc.NewClient(f.ctl.GRPCAddr(), rpc.DialOptions(tlsConf)...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close() })
	return conn
}

func (f *fleet) stop() {
	for _, a := range f.agents {
		a.stop()
	}
	f.stopController()
}

// stopController stops the controller; once stopped, it does nothing.
func (f *fleet) stopController() {
	if f.done == nil {
		return
	}
	f.cancel()
	select {
	case err := <-f.done:
		if err != nil {
			f.t.Errorf("controller Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		f.t.Error("controller did not stop within 15s")
	}
	f.done = nil
}

// caPool is the controller's CA, as a client trusts it.
func (f *fleet) caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(f.dir, "controller", "ca.crt"))
	pool.AppendCertsFromPEM(caPEM)
	return pool
}

func (f *fleet) token(group string, uses uint32) *ferryv1.CreateTokenResponse {
	f.t.Helper()
	resp, err := ferryv1.NewTokenServiceClient(f.admin).CreateToken(context.Background(), &ferryv1.CreateTokenRequest{Group: group, MaxUses: uses})
	if err != nil {
		f.t.Fatalf("create token: %v", err)
	}
	return resp
}

// enroll enrolls a node through a proxy the test can cut.
func (f *fleet) enroll(id string, tok *ferryv1.CreateTokenResponse) *testAgent {
	f.t.Helper()
	a := &testAgent{t: f.t, id: id, stateDir: filepath.Join(f.dir, "agents", id)}
	_, err := enroll.Enroll(context.Background(), enroll.Options{
		Controllers: []string{f.ctl.GRPCAddr()}, Token: tok.Secret, CAPin: tok.CaPin, NodeID: id, StateDir: a.stateDir,
	})
	if err != nil {
		f.t.Fatalf("enroll %s: %v", id, err)
	}
	a.proxy = newProxy(f.t, f.ctl.GRPCAddr())
	f.agents[id] = a
	return a
}

// start runs the agent's daemon in this process.
func (f *fleet) start(a *testAgent) {
	f.t.Helper()
	f.startWith(a, nil)
}

// startWith is start with the agent's config changed by mod.
func (f *fleet) startWith(a *testAgent, mod func(*agent.Config)) {
	f.t.Helper()
	root := filepath.Join(f.dir, "roots", a.id)
	if err := os.MkdirAll(root, 0o755); err != nil {
		f.t.Fatal(err)
	}
	cfg := agent.Config{
		StateDir: a.stateDir, Root: root, Controllers: []string{a.proxy.addr()},
		BackoffBase: 50 * time.Millisecond, BackoffMax: 300 * time.Millisecond, Logger: testLogger().With("agent", a.id),
		Gossip: gossipConfig(f.gossip), MetricsAddr: a.metricsAddr,
	}
	if a.configure != nil {
		a.configure(&cfg)
	}
	if mod != nil {
		mod(&cfg)
	}
	ag, err := agent.New(cfg)
	if err != nil {
		f.t.Fatalf("agent %s: %v", a.id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.done = make(chan error, 1)
	go func() { a.done <- ag.Run(ctx) }()
}

func gossipConfig(on bool) agent.GossipConfig {
	if !on {
		return agent.GossipConfig{}
	}
	return agent.GossipConfig{Addr: "127.0.0.1:0", Profile: "local"}
}

// stop shuts the agent down gracefully.
func (a *testAgent) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.t.Errorf("agent %s Run: %v", a.id, err)
	}
	a.cancel = nil
	a.proxy.close()
}

// kill cuts the agent off abruptly, as a SIGKILL or a pulled cable would:
// its connections are reset and it cannot reconnect.
func (a *testAgent) kill() {
	a.proxy.cut()
}

func (f *fleet) node(id string) *ferryv1.Node {
	f.t.Helper()
	resp, err := ferryv1.NewNodeServiceClient(f.admin).ListNodes(context.Background(), &ferryv1.ListNodesRequest{})
	if err != nil {
		f.t.Fatalf("list nodes: %v", err)
	}
	for _, n := range resp.Nodes {
		if n.Id == id {
			return n
		}
	}
	return nil
}

// waitState waits until a node reaches a state.
func (f *fleet) waitState(id string, want ferryv1.NodeState, timeout time.Duration) *ferryv1.Node {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	var n *ferryv1.Node
	for time.Now().Before(deadline) {
		n = f.node(id)
		if n != nil && n.State == want {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatalf("node %s: want state %s within %s, have %v (%s)", id, want, timeout, n.GetState(), n.GetStateReason())
	return nil
}

// proxy is a TCP forwarder whose connections the test can cut.
type proxy struct {
	t      *testing.T
	lis    net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	down   bool
}

func newProxy(t *testing.T, target string) *proxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, lis: lis, target: target}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		// Each direction ends when either side closes or the test cuts it.
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// cut resets every connection and refuses new ones.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.resetLocked()
}

// reset drops every connection at once (TCP reset), as a flapping switch
// port does, and keeps accepting new ones.
func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *proxy) resetLocked() {
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset rather than a FIN, where the socket allows it
		}
		c.Close()
	}
	p.conns = nil
}

// restore accepts connections again after a cut.
func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.cut()
	p.lis.Close()
}
