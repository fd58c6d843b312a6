package server

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

func testCSR(t testing.TB) []byte {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func fromPeer(ip string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
}

// TestEnrollLimitPerToken: calls naming one join token are refused past
// its burst, whoever sends them; other tokens are not affected; loopback
// peers are exempt unless asked.
func TestEnrollLimitPerToken(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d := &Deps{Store: st, Logger: slog.New(slog.DiscardHandler), Now: time.Now}
	csr := testCSR(t)
	call := func(svc ferryv1.EnrollmentServiceServer, ctx context.Context, token string) codes.Code {
		_, err := svc.Enroll(ctx, &ferryv1.EnrollRequest{Token: token, NodeId: "n1", CsrDer: csr})
		if s, _ := status.FromError(err); s.Code() == codes.ResourceExhausted && !strings.Contains(s.Message(), "too many enrollment requests with join token") {
			t.Errorf("refusal does not say why: %v", err)
		}
		return status.Code(err)
	}
	rate := ratelimit.Rate{PerSecond: 0.001, Burst: 3} // no refill during the test
	const tokA, tokB = "aaaaaa.0123456789abcdef", "bbbbbb.0123456789abcdef"

	svc := NewEnrollmentService(d, EnrollLimits{PerToken: rate})
	for i, ip := range []string{"192.0.2.1", "192.0.2.2", "198.51.100.3"} {
		// The token does not exist: refused, but counted.
		if c := call(svc, fromPeer(ip), tokA); c != codes.Unauthenticated {
			t.Fatalf("call %d with token aaaaaa: %s, want Unauthenticated", i+1, c)
		}
	}
	if c := call(svc, fromPeer("203.0.113.4"), tokA); c != codes.ResourceExhausted {
		t.Fatalf("call past the burst, from yet another address: %s, want ResourceExhausted", c)
	}
	if c := call(svc, fromPeer("192.0.2.1"), tokB); c != codes.Unauthenticated {
		t.Fatalf("another token: %s, want Unauthenticated (not limited)", c)
	}
	if c := call(svc, fromPeer("not an address"), "malformed"); c != codes.Unauthenticated {
		t.Fatalf("malformed token: %s, want Unauthenticated", c)
	}
	for range 5 {
		if c := call(svc, fromPeer("127.0.0.1"), tokA); c != codes.Unauthenticated {
			t.Fatalf("loopback peer: %s, want Unauthenticated (exempt)", c)
		}
	}

	strict := NewEnrollmentService(d, EnrollLimits{PerToken: rate, LimitLoopback: true})
	for range 3 {
		call(strict, fromPeer("127.0.0.1"), tokA)
	}
	if c := call(strict, fromPeer("127.0.0.1"), tokA); c != codes.ResourceExhausted {
		t.Fatalf("loopback peer with LimitLoopback: %s, want ResourceExhausted", c)
	}
}
