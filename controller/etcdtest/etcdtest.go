// Package etcdtest starts a real etcd server inside the test process
// (go.etcd.io/etcd/server/v3/embed) on loopback with free ports in a
// temporary directory, so tests of the etcd store and of leader election
// never depend on an outside service. Only tests import it: the controller
// binary must not link the etcd server.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one running embedded etcd member.
type Server struct {
	Endpoints []string
	etcd      *embed.Etcd
	dir       string
}

// Close stops the server and removes its data directory.
func (s *Server) Close() {
	s.etcd.Close()
	_ = os.RemoveAll(s.dir)
}

// Start runs a fresh single-member etcd for t and returns its client
// endpoints and a client connected to it; both are closed when t ends.
func Start(t testing.TB) (endpoints []string, client *clientv3.Client) {
	t.Helper()
	s, err := StartServer(t.TempDir())
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(s.Close)
	cli := Client(t, s.Endpoints)
	return s.Endpoints, cli
}

// Client connects to endpoints; the client is closed when t ends.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
	prefixSeq  atomic.Int64
)

// Shared returns the endpoints of one etcd server started once per test
// process (about a second saved per test) and a key prefix no other caller
// gets, so tests sharing the server do not see each other's keys. A package
// using it should call Main from its TestMain so the server stops at the end.
func Shared(t testing.TB) (endpoints []string, prefix string) {
	t.Helper()
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "etcdtest-")
		if err != nil {
			sharedErr = err
			return
		}
		shared, sharedErr = StartServer(dir)
		if sharedErr != nil {
			_ = os.RemoveAll(dir)
		}
	})
	if sharedErr != nil {
		t.Fatalf("start shared embedded etcd: %v", sharedErr)
	}
	return shared.Endpoints, fmt.Sprintf("/test%d", prefixSeq.Add(1))
}

// Main runs the tests of a package and stops the Shared server afterwards:
// func TestMain(m *testing.M) { etcdtest.Main(m) }. (A TestMain that
// returns exits with m.Run's code.)
func Main(m *testing.M) {
	m.Run()
	if shared != nil {
		shared.Close()
	}
}

// StartServer runs a single-member etcd with its data in dir, listening on
// free loopback ports, and waits until it serves.
func StartServer(dir string) (*Server, error) {
	var lastErr error
	for range 5 { // a port picked free can be taken before etcd binds it
		s, err := startOnce(dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
		_ = os.RemoveAll(dir + "/member")
	}
	return nil, lastErr
}

func startOnce(dir string) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true // test data; fsync only slows the shared machine
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after 30s", dir)
	}
	s := &Server{Endpoints: []string{cu.String()}, etcd: e, dir: dir}
	// Prove a client gets through before handing the server out.
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, err
	}
	defer func() { _ = cli.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "/"); err != nil {
		e.Close()
		return nil, err
	}
	return s, nil
}

func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
