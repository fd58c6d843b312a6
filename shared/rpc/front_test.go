package rpc_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
	"github.com/ferrydeploy/ferry/shared/rpc/rpctest"
)

// testFront is a Front and an API server as the controller builds them,
// with stand-ins for the enrollment and node services, on loopback.
type testFront struct {
	addr      string
	adminTLS  *tls.Config // an admin certificate
	anonTLS   *tls.Config // no client certificate
	deadlines chan time.Duration
}

type enrollStub struct {
	ferryv1.UnimplementedEnrollmentServiceServer
}

func (enrollStub) Enroll(_ context.Context, req *ferryv1.EnrollRequest) (*ferryv1.EnrollResponse, error) {
	return &ferryv1.EnrollResponse{NodeId: req.GetNodeId()}, nil
}

type nodesStub struct {
	ferryv1.UnimplementedNodeServiceServer
	deadlines chan time.Duration
}

func (s nodesStub) ListNodes(ctx context.Context, _ *ferryv1.ListNodesRequest) (*ferryv1.ListNodesResponse, error) {
	if d, ok := ctx.Deadline(); ok {
		select {
		case s.deadlines <- time.Until(d):
		default:
		}
	}
	return &ferryv1.ListNodesResponse{}, nil
}

func startFront(t *testing.T, l rpc.Limits) *testFront {
	t.Helper()
	p := pkitest.New(t)
	tf := &testFront{
		adminTLS:  p.ClientTLS(p.Admin),
		anonTLS:   p.ClientTLS(tls.Certificate{}),
		deadlines: make(chan time.Duration, 1),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := rpc.ServerOptions{
		TLS:    p.ServerTLS(),
		Logger: slog.New(slog.DiscardHandler),
		Limits: l,
	}
	api := rpc.NewServer(o)
	ferryv1.RegisterNodeServiceServer(api, nodesStub{deadlines: tf.deadlines})
	front := rpc.NewFront(lis, o)
	ferryv1.RegisterEnrollmentServiceServer(front, enrollStub{})
	go func() { _ = api.Serve(front) }() // returns at Stop
	t.Cleanup(api.Stop)                  // closes the Front
	tf.addr = lis.Addr().String()
	return tf
}

func (tf *testFront) dial(t *testing.T, conf *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(tf.addr, rpc.DialOptions(conf)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func enroll(conn *grpc.ClientConn, labels map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := ferryv1.NewEnrollmentServiceClient(conn).Enroll(ctx, &ferryv1.EnrollRequest{NodeId: "n1", Labels: labels})
	return err
}

func listNodes(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := ferryv1.NewNodeServiceClient(conn).ListNodes(ctx, &ferryv1.ListNodesRequest{})
	return err
}

func wantRefused(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if s, _ := status.FromError(err); s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("%s: %v; want %s saying %q", what, err, code, msg)
	}
}

func TestFrontRoutesByCertificate(t *testing.T) {
	tf := startFront(t, rpc.Limits{})
	admin, anon := tf.dial(t, tf.adminTLS), tf.dial(t, tf.anonTLS)
	if err := listNodes(admin); err != nil {
		t.Fatalf("admin ListNodes: %v", err)
	}
	if err := enroll(anon, nil); err != nil {
		t.Fatalf("Enroll without a certificate: %v", err)
	}
	wantRefused(t, "ListNodes without a certificate", listNodes(anon), codes.Unauthenticated, "requires a client certificate")
	// The API server has no enrollment service here: an admin's Enroll
	// reaching it proves certificate holders never meet the public server.
	wantRefused(t, "admin Enroll", enroll(admin, nil), codes.Unimplemented, "EnrollmentService")
}

func TestFrontRefusesOversizedEnrollment(t *testing.T) {
	tf := startFront(t, rpc.Limits{})
	anon := tf.dial(t, tf.anonTLS)
	big := map[string]string{"note": strings.Repeat("x", rpc.DefaultLimits.PublicMaxRecvMsgSize)}
	wantRefused(t, "oversized Enroll", enroll(anon, big), codes.ResourceExhausted, "larger than max")
	if err := enroll(anon, map[string]string{"note": "small"}); err != nil {
		t.Fatalf("Enroll after the refusal: %v", err)
	}
}

// TestFrontCapsStreams opens more streams than a public connection may
// have, each announcing 8 MiB: the extra ones are refused and the others
// answered ResourceExhausted as soon as their message header is read.
func TestFrontCapsStreams(t *testing.T) {
	tf := startFront(t, rpc.Limits{})
	p, err := rpctest.Dial(tf.addr, tf.anonTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 24
	if _, err := p.Flood("/ferry.v1.EnrollmentService/Enroll", n, 8<<20, 7<<20, time.Second); err != nil {
		t.Fatal(err)
	}
	refused, exhausted := 0, 0
	for _, s := range p.WaitEnded(10 * time.Second) {
		switch {
		case s.Refused:
			refused++
		case s.Status != nil && *s.Status == codes.ResourceExhausted:
			exhausted++
		default:
			t.Errorf("%v; want refused or ResourceExhausted", s)
		}
	}
	if most := int(rpc.DefaultLimits.PublicMaxStreams); refused != n-most || exhausted != most {
		t.Errorf("%d streams refused and %d answered ResourceExhausted; want %d and %d", refused, exhausted, n-most, most)
	}
}

// TestFrontDeadlines: a public call's deadline also covers reading its
// request (a peer that stalls mid-message is cut off), and an API call
// without a deadline gets the default one.
func TestFrontDeadlines(t *testing.T) {
	tf := startFront(t, rpc.Limits{UnaryTimeout: 300 * time.Millisecond})
	p, err := rpctest.Dial(tf.addr, tf.anonTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Flood("/ferry.v1.EnrollmentService/Enroll", 1, 100, 10, time.Second); err != nil {
		t.Fatal(err)
	}
	s := p.WaitEnded(10 * time.Second)[0]
	if s.Status == nil || *s.Status != codes.DeadlineExceeded {
		t.Errorf("stalled request: %v; want DeadlineExceeded", s)
	}

	conn, err := grpc.NewClient(tf.addr, rpc.DialOptions(tf.adminTLS)...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := ferryv1.NewNodeServiceClient(conn).ListNodes(context.Background(), &ferryv1.ListNodesRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-tf.deadlines:
		if d <= 0 || d > 300*time.Millisecond {
			t.Errorf("API call without a deadline got %v left, want at most the 300ms default", d)
		}
	default:
		t.Error("API call without a deadline ran without one")
	}
}

func TestFrontPerAddressLimits(t *testing.T) {
	unlimited := ratelimit.Rate{PerSecond: 1000, Burst: 1000}
	none := ratelimit.Rate{PerSecond: 0.001, Burst: 1} // one, then none during the test
	t.Run("open connections", func(t *testing.T) {
		tf := startFront(t, rpc.Limits{LimitLoopback: true, PublicConnsPerPeer: 2, PublicConnRate: unlimited, PublicCallRate: unlimited})
		first, second := tf.dial(t, tf.anonTLS), tf.dial(t, tf.anonTLS)
		for _, c := range []*grpc.ClientConn{first, second} {
			if err := enroll(c, nil); err != nil {
				t.Fatalf("Enroll within the limit: %v", err)
			}
		}
		wantRefused(t, "third connection", enroll(tf.dial(t, tf.anonTLS), nil), codes.ResourceExhausted, "refuses more connections without a client certificate from 127.0.0.1: at most 2 may be open at once")
		if err := listNodes(tf.dial(t, tf.adminTLS)); err != nil {
			t.Fatalf("admin call while the address is at its limit: %v", err)
		}
		first.Close()
		deadline := time.Now().Add(10 * time.Second)
		for err := enroll(tf.dial(t, tf.anonTLS), nil); err != nil; err = enroll(tf.dial(t, tf.anonTLS), nil) {
			if time.Now().After(deadline) {
				t.Fatalf("a connection closed but the address is still refused: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("new connections", func(t *testing.T) {
		tf := startFront(t, rpc.Limits{LimitLoopback: true, PublicConnRate: ratelimit.Rate{PerSecond: 0.001, Burst: 2}, PublicCallRate: unlimited})
		for range 2 {
			c := tf.dial(t, tf.anonTLS)
			if err := enroll(c, nil); err != nil {
				t.Fatalf("Enroll within the limit: %v", err)
			}
			c.Close()
		}
		wantRefused(t, "third connection", enroll(tf.dial(t, tf.anonTLS), nil), codes.ResourceExhausted, "new ones are allowed at 0.001 per second, bursts of 2")
	})
	t.Run("calls", func(t *testing.T) {
		tf := startFront(t, rpc.Limits{LimitLoopback: true, PublicCallRate: none})
		c := tf.dial(t, tf.anonTLS)
		if err := enroll(c, nil); err != nil {
			t.Fatalf("Enroll within the limit: %v", err)
		}
		wantRefused(t, "second call", enroll(c, nil), codes.ResourceExhausted, "too many enrollment requests from 127.0.0.1")
	})
	t.Run("open connections from all addresses", func(t *testing.T) {
		tf := startFront(t, rpc.Limits{PublicConns: 2}) // loopback: the per-address limits do not apply, this one does
		for range 2 {
			if err := enroll(tf.dial(t, tf.anonTLS), nil); err != nil {
				t.Fatalf("Enroll within the limit: %v", err)
			}
		}
		wantRefused(t, "third connection", enroll(tf.dial(t, tf.anonTLS), nil), codes.ResourceExhausted, "the controller has 2 connections without a client certificate open, its limit")
	})
	t.Run("loopback is exempt by default", func(t *testing.T) {
		tf := startFront(t, rpc.Limits{PublicConnsPerPeer: 1, PublicConnRate: none, PublicCallRate: none})
		for range 3 {
			if err := enroll(tf.dial(t, tf.anonTLS), nil); err != nil {
				t.Fatalf("Enroll from loopback: %v", err)
			}
		}
	})
}

// TestFrontCapsHandshakes: connections that never finish the TLS handshake
// are capped per address before the handshake starts, so one peer cannot
// hold thousands of goroutines and file descriptors; a client that
// handshakes gets through again once they are gone.
func TestFrontCapsHandshakes(t *testing.T) {
	unlimited := ratelimit.Rate{PerSecond: 1000, Burst: 1000}
	tf := startFront(t, rpc.Limits{LimitLoopback: true, PublicConnsPerPeer: 4, PublicConnRate: unlimited, PublicCallRate: unlimited, HandshakeTimeout: 30 * time.Second})
	var stalled []net.Conn
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
	}()
	for range 4 {
		c, err := net.Dial("tcp", tf.addr)
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	// Past the cap: closed at once, before any byte is read.
	closed := 0
	for range 6 {
		c, err := net.Dial("tcp", tf.addr)
		if err != nil {
			closed++
			continue
		}
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			closed++
		}
		c.Close()
	}
	if closed != 6 {
		t.Errorf("%d of 6 connections past the handshake cap were closed, want all", closed)
	}
	for _, c := range stalled {
		c.Close()
	}
	stalled = nil
	deadline := time.Now().Add(10 * time.Second)
	for err := enroll(tf.dial(t, tf.anonTLS), nil); err != nil; err = enroll(tf.dial(t, tf.anonTLS), nil) {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled handshakes are gone but the address is still refused: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
