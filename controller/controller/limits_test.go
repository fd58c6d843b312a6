package controller

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/rpc/rpctest"
)

func runController(t *testing.T) *Controller {
	t.Helper()
	c, err := New(Config{DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	return c
}

func dialAdmin(t *testing.T, c *Controller) ferryv1.NodeServiceClient {
	t.Helper()
	conf, err := c.AdminTLS()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.GRPCAddr(), rpc.DialOptions(conf)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ferryv1.NewNodeServiceClient(conn)
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestHostilePeerWithoutCertificate repeats attack 1 of issue 11: one TLS
// connection without a client certificate opens 32 streams to Enroll, each
// announcing an 8 MiB message and sending 7 MiB of it without ending. The
// controller must cap the streams, refuse the announced size before
// buffering it, hold at most 32 MiB for the connection while it stays
// open, and keep answering an admin meanwhile (latency logged, not
// asserted beyond a generous 5 s).
func TestHostilePeerWithoutCertificate(t *testing.T) {
	c := runController(t)
	admin := dialAdmin(t, c)
	if _, err := admin.ListNodes(context.Background(), &ferryv1.ListNodesRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	base := heapInUse()

	// An admin calls every 20 ms during the attack.
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  []error
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			began := time.Now()
			_, err := admin.ListNodes(ctx, &ferryv1.ListNodesRequest{})
			cancel()
			mu.Lock()
			latencies = append(latencies, time.Since(began))
			if err != nil {
				failures = append(failures, err)
			}
			mu.Unlock()
		}
	})

	p, err := rpctest.Dial(c.GRPCAddr(), rpc.PinnedTLS(c.CAPin(), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const streams = 32
	if _, err := p.Flood("/ferry.v1.EnrollmentService/Enroll", streams, 8<<20, 7<<20, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// The hostile connection stays open, answering pings, while the admin
	// goes on calling and the heap is measured.
	held := p.WaitEnded(5 * time.Second)
	time.Sleep(2 * time.Second)
	growth := int64(heapInUse()) - int64(base)
	close(stop)
	wg.Wait()

	o := rpctest.Summarize(held)
	for _, s := range o.Other {
		t.Errorf("%v; want refused, or answered ResourceExhausted", s)
	}
	t.Logf("%d streams refused, %d answered ResourceExhausted; the server let %d bytes through; heap grew %.1f MiB", o.Refused, o.Exhausted, o.Sent, float64(growth)/(1<<20))
	if o.Refused < streams-int(rpc.DefaultLimits.PublicMaxStreams) {
		t.Errorf("%d of %d streams refused: the streams of one connection are not capped at %d", o.Refused, streams, rpc.DefaultLimits.PublicMaxStreams)
	}
	if growth > 32<<20 {
		t.Errorf("heap grew %.1f MiB under one hostile connection, want at most 32 MiB", float64(growth)/(1<<20))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(latencies) == 0 {
		t.Fatal("no admin call ran during the attack")
	}
	for _, err := range failures {
		t.Errorf("admin ListNodes during the attack: %v", err)
	}
	slices.Sort(latencies)
	t.Logf("admin ListNodes during the attack: %d calls, median %v, max %v", len(latencies), latencies[len(latencies)/2], latencies[len(latencies)-1])
}

// TestOversizedEnrollmentRefused: a well-formed client sending an
// enrollment request over the public limit gets ResourceExhausted, while
// the controller still enrolls a normal request's size (here refused for
// its unknown token, not its size).
func TestOversizedEnrollmentRefused(t *testing.T) {
	c := runController(t)
	conn, err := grpc.NewClient(c.GRPCAddr(), rpc.DialOptions(rpc.PinnedTLS(c.CAPin(), nil))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	enroll := ferryv1.NewEnrollmentServiceClient(conn)
	req := &ferryv1.EnrollRequest{Token: "abcdef.0123456789abcdef", NodeId: "n1", Labels: map[string]string{"note": strings.Repeat("x", 64<<10)}}
	if _, err := enroll.Enroll(ctx, req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("64 KiB enrollment request: %v, want ResourceExhausted", err)
	}
	req.Labels = map[string]string{"note": "small"}
	if _, err := enroll.Enroll(ctx, req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("small enrollment request without a CSR: %v, want InvalidArgument", err)
	}
}
