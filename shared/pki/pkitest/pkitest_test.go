package pkitest

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/ferrydeploy/ferry/shared/pki"
)

// handshake runs a TLS handshake between server and client over a pipe
// and returns the identity the server saw.
func handshake(t *testing.T, server, client *tls.Config) pki.Identity {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(a, server)
	errc := make(chan error, 1)
	go func() { errc <- tls.Client(b, client).Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	peers := srv.ConnectionState().PeerCertificates
	if len(peers) == 0 {
		t.Fatal("client presented no certificate")
	}
	id, err := pki.ParseIdentity(peers[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestNew(t *testing.T) {
	p := New(t)
	for _, tc := range []struct {
		cert tls.Certificate
		want pki.Identity
	}{
		{p.Admin, pki.Identity{Role: pki.RoleAdmin, Name: AdminName}},
		{p.Agent, pki.Identity{Role: pki.RoleAgent, Name: AgentName}},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			if got := handshake(t, p.ServerTLS(), p.ClientTLS(tc.cert)); got != tc.want {
				t.Errorf("server saw %v, want %v", got, tc.want)
			}
		})
	}
}

func TestServerFiles(t *testing.T) {
	p := New(t)
	dir := t.TempDir()
	p.WriteServerFiles(t, dir)
	conf, err := ReadServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := handshake(t, conf, p.ClientTLS(p.Agent)); got.Role != pki.RoleAgent {
		t.Errorf("server saw %v, want the agent", got)
	}
	if _, err := ReadServerTLS(t.TempDir()); err == nil {
		t.Error("ReadServerTLS of an empty dir succeeded")
	}
}
