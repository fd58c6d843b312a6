// Package pkitest gives tests a throwaway Ferry PKI: a fresh CA and
// certificates for the controller, an admin and an agent, valid for an
// hour on 127.0.0.1, with the TLS configs Ferry's servers and clients use.
package pkitest

import (
	"crypto"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Names of the admin and the agent New issues certificates for.
const (
	AdminName = "alice"
	AgentName = "n1"
)

// PKI is a CA and the certificates it issued.
type PKI struct {
	CA                   *pki.CA
	Server, Admin, Agent tls.Certificate
}

// New makes a CA and certificates for the controller, admin AdminName and
// agent AgentName.
func New(tb testing.TB) *PKI {
	tb.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	p := &PKI{CA: ca}
	p.Server = p.Issue(tb, pki.Identity{Role: pki.RoleController})
	p.Admin = p.Issue(tb, pki.Identity{Role: pki.RoleAdmin, Name: AdminName})
	p.Agent = p.Issue(tb, pki.Identity{Role: pki.RoleAgent, Name: AgentName})
	return p
}

// Issue signs a certificate for id, valid for an hour on 127.0.0.1, with
// the CA in its chain.
func (p *PKI) Issue(tb testing.TB, id pki.Identity) tls.Certificate {
	tb.Helper()
	now := time.Now()
	key, err := pki.NewKey()
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := p.CA.Sign(pki.SignRequest{Identity: id, PublicKey: key.Public(), TTL: time.Hour, Now: now, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, p.CA.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// ServerTLS is the controller's TLS config with the Server certificate.
func (p *PKI) ServerTLS() *tls.Config {
	return rpc.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &p.Server, nil }, p.CA.Pool())
}

// ClientTLS is the TLS config of a client (agent or admin) presenting c.
func (p *PKI) ClientTLS(c tls.Certificate) *tls.Config {
	return rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }, p.CA.Pool())
}

// The files WriteServerFiles writes.
const (
	caFile         = "ca.crt"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
)

// WriteServerFiles writes the CA certificate and the Server certificate
// and key to dir, for a server in a child process to read with
// ReadServerTLS.
func (p *PKI) WriteServerFiles(tb testing.TB, dir string) {
	tb.Helper()
	keyPEM, err := pki.EncodeKey(p.Server.PrivateKey.(crypto.Signer))
	if err != nil {
		tb.Fatal(err)
	}
	for name, data := range map[string][]byte{caFile: pki.EncodeCert(p.CA.Cert), serverCertFile: pki.EncodeCert(p.Server.Leaf), serverKeyFile: keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
}

// ReadServerTLS reads what WriteServerFiles wrote to dir and returns the
// controller's TLS config with that certificate.
func ReadServerTLS(dir string) (*tls.Config, error) {
	var pem [3][]byte
	for i, name := range []string{caFile, serverCertFile, serverKeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		pem[i] = b
	}
	caCert, err := pki.DecodeCert(pem[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caFile, err)
	}
	leaf, err := pki.DecodeCert(pem[1])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", serverCertFile, err)
	}
	key, err := pki.DecodeKey(pem[2])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", serverKeyFile, err)
	}
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw, caCert.Raw}, PrivateKey: key, Leaf: leaf}
	return rpc.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, (&pki.CA{Cert: caCert}).Pool()), nil
}
