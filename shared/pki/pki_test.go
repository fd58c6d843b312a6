package pki

import (
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIdentityRoundTrip(t *testing.T) {
	ca, err := NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []Identity{{Role: RoleAgent, Name: "web-01"}, {Role: RoleAdmin, Name: "alice"}, {Role: RoleController}} {
		t.Run(id.String(), func(t *testing.T) {
			key, _ := NewKey()
			cert, err := ca.Sign(SignRequest{Identity: id, PublicKey: key.Public(), TTL: time.Hour, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseIdentity(cert)
			if err != nil || got != id {
				t.Fatalf("ParseIdentity = %v, %v; want %v", got, err, id)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("certificate does not verify against its CA: %v", err)
			}
		})
	}
}

func TestSignIgnoresCSRNames(t *testing.T) {
	ca, _ := NewCA(time.Now())
	key, _ := NewKey()
	// A CSR claiming to be an admin: only the identity the CA is asked to
	// sign may end up in the certificate.
	der, err := CreateCSR(key, Identity{Role: RoleAdmin, Name: "root"})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(SignRequest{Identity: Identity{Role: RoleAgent, Name: "n1"}, PublicKey: csr.PublicKey, TTL: time.Hour, Now: time.Now(), DNSNames: []string{"evil.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := ParseIdentity(cert); id != (Identity{Role: RoleAgent, Name: "n1"}) {
		t.Errorf("identity = %v, want agent/n1", id)
	}
	if len(cert.DNSNames) != 0 || len(cert.URIs) != 1 {
		t.Errorf("agent certificate carries extra names: %v %v", cert.DNSNames, cert.URIs)
	}
}

func TestParseIdentityRefuses(t *testing.T) {
	cases := map[string][]*url.URL{
		"none":         nil,
		"two":          {{Scheme: "spiffe", Host: "ferry", Path: "/agent/a"}, {Scheme: "spiffe", Host: "ferry", Path: "/admin/b"}},
		"other domain": {{Scheme: "spiffe", Host: "evil", Path: "/admin/b"}},
		"bad name":     {{Scheme: "spiffe", Host: "ferry", Path: "/agent/UPPER"}},
		"unknown role": {{Scheme: "spiffe", Host: "ferry", Path: "/root/x"}},
		"nested path":  {{Scheme: "spiffe", Host: "ferry", Path: "/agent/a/b"}},
	}
	for name, uris := range cases {
		t.Run(name, func(t *testing.T) {
			if id, err := ParseIdentity(&x509.Certificate{URIs: uris}); err == nil {
				t.Errorf("ParseIdentity accepted %v as %v", uris, id)
			}
		})
	}
}

func TestCheckPin(t *testing.T) {
	ca, _ := NewCA(time.Now())
	other, _ := NewCA(time.Now())
	if err := CheckPin(ca.Pin(), ca.Cert); err != nil {
		t.Errorf("own pin refused: %v", err)
	}
	if err := CheckPin(strings.ToUpper(ca.Pin()[7:]), ca.Cert); err == nil {
		t.Error("pin without sha256: prefix accepted")
	}
	if err := CheckPin(other.Pin(), ca.Cert); err == nil || !strings.Contains(err.Error(), "mismatch") {
		t.Errorf("other CA's pin: %v, want a mismatch", err)
	}
	if err := ValidatePin("sha256:zz" + strings.Repeat("0", 62)); err == nil {
		t.Error("non-hex pin accepted")
	}
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := t.TempDir()
	ca, created, err := LoadOrCreateCA(dir, time.Now())
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	again, created, err := LoadOrCreateCA(dir, time.Now())
	if err != nil || created || again.Pin() != ca.Pin() {
		t.Fatalf("restart: created=%v err=%v pin %s vs %s", created, err, again.Pin(), ca.Pin())
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", st.Mode().Perm())
	}
	if err := os.Remove(filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateCA(dir, time.Now()); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("half a CA: %v, want an error (never a silent new CA)", err)
	}
}
