package agent

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/ferrydeploy/ferry/agent/internal/identity"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// parseAgentCert checks a renewed certificate: signed by the pinned CA,
// naming this node, for the new key.
func parseAgentCert(der []byte, id *identity.Identity, key crypto.Signer) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("renewed certificate: %w", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: id.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("renewed certificate does not verify against the CA: %w", err)
	}
	got, err := pki.ParseIdentity(cert)
	if err != nil || got.Role != pki.RoleAgent || got.Name != id.Info.NodeID {
		return nil, fmt.Errorf("renewed certificate names %v, want agent/%s", got, id.Info.NodeID)
	}
	if pk, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pk.Equal(key.Public()) {
		return nil, errors.New("renewed certificate is not for the new key")
	}
	return cert, nil
}
