// Package exchange is the agent's side of peer exchange between agents of
// one installation: a piece server (PieceService over mTLS with the
// agent's own certificate) that serves verified pieces of the downloads
// this agent holds to other agents the controller allows, and a client
// that fetches pieces from them. Which pieces there are, who holds them
// and how each is verified is package fetch's business; this package
// moves bytes between authenticated agents only.
//
// Agent certificates are client certificates (pki signs them for client
// authentication only), so both ends verify the other's certificate by
// hand against the installation's CA: the server with Go's client
// certificate verification, the client in VerifyConnection. Either side
// accepts only an agent identity (spiffe://ferry/agent/<node-id>); the
// client also wants the very node it meant to dial.
package exchange

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydeploy/ferry/shared/pki"
)

// serverTLS is the piece server's TLS config: TLS 1.3, the agent's own
// (current) certificate, and a client certificate of the CA required;
// now is the clock certificates are judged by (the controller's).
func serverTLS(cert func() *tls.Certificate, pool *x509.CertPool, now func() time.Time) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		Time:           now,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert(), nil },
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      pool,
	}
}

// clientTLS is the TLS config for dialling the piece server of node: the
// agent's own certificate as the client's, and the server's verified
// against the CA as an agent certificate of node.
func clientTLS(cert func() *tls.Certificate, pool *x509.CertPool, node string, now func() time.Time) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The server presents an agent (client-auth) certificate, which
		// the default verification refuses as a server's:
		// VerifyConnection verifies it instead.
		InsecureSkipVerify:   true, //nolint:gosec // G402: VerifyConnection verifies the chain against the CA and the node's identity.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert(), nil },
		VerifyConnection:     func(cs tls.ConnectionState) error { return verifyPeer(cs, pool, node, now()) },
	}
}

// verifyPeer checks that the server of cs is node's agent certificate
// signed by the CA in pool.
func verifyPeer(cs tls.ConnectionState, pool *x509.CertPool, node string, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the peer's certificate is not one of this installation's CA: %w", err)
	}
	id, err := pki.ParseIdentity(leaf)
	if err != nil {
		return fmt.Errorf("the peer's certificate: %w", err)
	}
	if id.Role != pki.RoleAgent || id.Name != node {
		return fmt.Errorf("the peer is %s, not agent/%s", id, node)
	}
	return nil
}
