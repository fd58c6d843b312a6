// Package credential reads and writes the admin credential file ferryctl
// uses (like a kubeconfig): the controller address, the CA certificate and
// an admin certificate with its key, all in one 0600 YAML file.
package credential

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// File is the on-disk form.
type File struct {
	Controller  string `yaml:"controller"`
	CA          string `yaml:"ca"`
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// Credential is a loaded, checked credential.
type Credential struct {
	Controller string
	CA         *x509.Certificate
	Cert       tls.Certificate
	Identity   pki.Identity
}

// Write stores a credential file with mode 0600.
func Write(path, controller string, ca, cert *x509.Certificate, keyPEM []byte) error {
	data, err := yaml.Marshal(File{
		Controller:  controller,
		CA:          string(pki.EncodeCert(ca)),
		Certificate: string(pki.EncodeCert(cert)),
		Key:         string(keyPEM),
	})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// SetController rewrites the controller address of a credential file.
func SetController(path, controller string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f File
	if err := yaml.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("admin credential %s: %w", path, err)
	}
	f.Controller = controller
	out, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, out, 0o600)
}

// Load reads and checks a credential file.
func Load(path string) (*Credential, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("admin credential %s does not exist; pass --config or set FERRY_CONFIG to the admin.yaml the controller wrote in its data dir", path)
		}
		return nil, fmt.Errorf("read admin credential: %w", err)
	}
	var f File
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("admin credential %s: %w", path, err)
	}
	if f.Controller == "" {
		return nil, fmt.Errorf("admin credential %s: controller address is empty", path)
	}
	ca, err := pki.DecodeCert([]byte(f.CA))
	if err != nil {
		return nil, fmt.Errorf("admin credential %s: ca: %w", path, err)
	}
	cert, err := tls.X509KeyPair([]byte(f.Certificate), []byte(f.Key))
	if err != nil {
		return nil, fmt.Errorf("admin credential %s: certificate/key: %w", path, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	cert.Leaf = leaf
	id, err := pki.ParseIdentity(leaf)
	if err != nil {
		return nil, fmt.Errorf("admin credential %s: %w", path, err)
	}
	return &Credential{Controller: f.Controller, CA: ca, Cert: cert, Identity: id}, nil
}

// TLS returns the client TLS config for the credential: TLS 1.3, the CA
// as the only root, and the peer must be the controller.
func (c *Credential) TLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(c.CA)
	cert := c.Cert
	return rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }, pool)
}
