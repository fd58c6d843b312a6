// Package pki is Ferry's certificate authority and identity model: a
// self-signed CA, certificates that carry a SPIFFE-style URI SAN naming the
// role and subject (spiffe://ferry/agent/<node>), CA pins for first contact,
// and PEM files written atomically.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// TrustDomain is the URI SAN host of every Ferry identity.
const TrustDomain = "ferry"

// Backdate is how far before its issuance a certificate's NotBefore is set,
// to tolerate clock skew between the controller and the nodes.
const Backdate = 5 * time.Minute

// ControllerServerName is a DNS SAN every controller certificate carries;
// clients verify the controller under this name, so they can dial it by
// any address.
const ControllerServerName = "ferry-controller"

// Role is what a certificate may do.
type Role string

// Roles.
const (
	RoleAgent      Role = "agent"
	RoleAdmin      Role = "admin"
	RoleController Role = "controller"
)

// Identity is who a certificate speaks for.
type Identity struct {
	Role Role
	Name string // node ID for agents, admin name for admins, "" for the controller
}

func (id Identity) String() string {
	if id.Name == "" {
		return string(id.Role)
	}
	return string(id.Role) + "/" + id.Name
}

// URI is the identity's URI SAN.
func (id Identity) URI() *url.URL {
	p := "/" + string(id.Role)
	if id.Name != "" {
		p += "/" + id.Name
	}
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: p}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ValidateName checks a node ID or admin name.
func ValidateName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s %q is not valid: use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}

// ParseIdentity reads the identity from a certificate's URI SAN.
func ParseIdentity(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || u.Host != TrustDomain {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		switch {
		case len(parts) == 1 && parts[0] == string(RoleController):
			found = append(found, Identity{Role: RoleController})
		case len(parts) == 2 && (parts[0] == string(RoleAgent) || parts[0] == string(RoleAdmin)):
			if err := ValidateName(parts[0]+" name", parts[1]); err != nil {
				return Identity{}, err
			}
			found = append(found, Identity{Role: Role(parts[0]), Name: parts[1]})
		}
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("certificate %q carries %d ferry identities, want exactly 1", cert.Subject.CommonName, len(found))
	}
	return found[0], nil
}

// NewKey generates a P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// PinOf returns "sha256:<hex>" of a certificate's public key (its
// SubjectPublicKeyInfo), the form kubeadm uses for discovery pins.
func PinOf(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ValidatePin checks a pin's form: "sha256:" and 64 hex digits.
func ValidatePin(pin string) error {
	p := strings.ToLower(strings.TrimSpace(pin))
	if _, err := hex.DecodeString(strings.TrimPrefix(p, "sha256:")); err != nil || !strings.HasPrefix(p, "sha256:") || len(p) != len("sha256:")+64 {
		return fmt.Errorf("CA pin %q is malformed: want sha256:<64 hex digits>, as printed by the controller and by `ferryctl token create`", pin)
	}
	return nil
}

// CheckPin compares a pin given by a user with a certificate.
func CheckPin(pin string, cert *x509.Certificate) error {
	if err := ValidatePin(pin); err != nil {
		return err
	}
	want := strings.ToLower(strings.TrimSpace(pin))
	if got := PinOf(cert); got != want {
		return fmt.Errorf("CA pin mismatch: the controller presented a CA with pin %s, want %s; check the --ca-pin value and that you are talking to the right controller", got, want)
	}
	return nil
}

// CreateCSR makes a DER certificate request for key naming id.
func CreateCSR(key crypto.Signer, id Identity) ([]byte, error) {
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id.String()},
		URIs:    []*url.URL{id.URI()},
	}
	return x509.CreateCertificateRequest(rand.Reader, tmpl, key)
}

// CA signs Ferry certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA valid for ten years.
func NewCA(now time.Time) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Ferry CA", Organization: []string{"Ferry"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Pin is the CA's pin.
func (ca *CA) Pin() string { return PinOf(ca.Cert) }

// Pool is a cert pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// SignRequest names what to put in a certificate.
type SignRequest struct {
	Identity  Identity
	PublicKey crypto.PublicKey
	TTL       time.Duration
	Now       time.Time
	DNSNames  []string // server certificates only
	IPs       []net.IP // server certificates only
}

// Sign issues a certificate. Only the identity given here is written: the
// CSR's own names are never trusted.
func (ca *CA) Sign(req SignRequest) (*x509.Certificate, error) {
	if req.TTL <= 0 {
		return nil, errors.New("sign certificate: TTL must be positive")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := req.Now.Add(req.TTL)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Identity.String(), Organization: []string{"Ferry"}},
		NotBefore:    req.Now.Add(-Backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		URIs:         []*url.URL{req.Identity.URI()},
		DNSNames:     req.DNSNames,
		IPAddresses:  req.IPs,
	}
	if req.Identity.Role == RoleController {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = append([]string{ControllerServerName}, req.DNSNames...)
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames, tmpl.IPAddresses = nil, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, req.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", req.Identity, err)
	}
	return x509.ParseCertificate(der)
}

// ParseCSR parses and checks the signature of a DER CSR.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("certificate request is not valid DER PKCS#10: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("certificate request key: ECDSA keys must use P-256 or P-384")
		}
	default:
		return nil, fmt.Errorf("certificate request key type %T is not accepted; use ECDSA P-256", csr.PublicKey)
	}
	return csr, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return s, nil
}

// EncodeCert returns PEM for a certificate.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKey returns PEM for a private key (PKCS#8).
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodeCert parses the first CERTIFICATE block of a PEM text.
func DecodeCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no CERTIFICATE PEM block found")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// DecodeKey parses a PKCS#8 or EC private key PEM.
func DecodeKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PRIVATE KEY PEM block found")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("private key type %T cannot sign", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(b.Bytes)
		}
	}
}

// LoadOrCreateCA reads ca.crt and ca.key from dir, creating them on first
// use. created reports whether a new CA was made.
func LoadOrCreateCA(dir string, now time.Time) (ca *CA, created bool, err error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, errC := os.ReadFile(certPath)
	keyPEM, errK := os.ReadFile(keyPath)
	switch {
	case errC == nil && errK == nil:
		cert, err := DecodeCert(certPEM)
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", certPath, err)
		}
		key, err := DecodeKey(keyPEM)
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", keyPath, err)
		}
		return &CA{Cert: cert, Key: key}, false, nil
	case errors.Is(errC, os.ErrNotExist) && errors.Is(errK, os.ErrNotExist):
	default:
		// One file is missing or unreadable; errors.Join keeps the one or
		// two errors, each naming its file, and drops the nil.
		return nil, false, fmt.Errorf("CA in %s is incomplete: %w; restore both files from backup or remove both to create a new CA (every node must then re-enroll)", dir, errors.Join(errC, errK))
	}
	ca, err = NewCA(now)
	if err != nil {
		return nil, false, err
	}
	keyPEM, err = EncodeKey(ca.Key)
	if err != nil {
		return nil, false, err
	}
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	if err := atomicfile.WriteFile(certPath, EncodeCert(ca.Cert), 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}
