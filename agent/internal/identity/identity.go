// Package identity is the agent's enrolled identity in its state dir: its
// private key (generated on the node, never sent anywhere), its
// certificate, the pinned CA, and what enrollment granted (node ID, group,
// controller address, gossip key).
package identity

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// Files in the state dir.
const (
	keyFile   = "node.key"
	certFile  = "node.crt"
	caFile    = "ca.crt"
	stateFile = "identity.json"
)

// Info is what enrollment granted. GossipKey changes when the controller
// rotates it (SetGossipKey).
type Info struct {
	NodeID     string `json:"node_id"`
	Group      string `json:"group"`
	Controller string `json:"controller"` // the address enrollment went through
	// Controllers are every controller address the node was enrolled
	// with (--controller a:7443,b:7443), which `run` dials unless given
	// others; empty in identities from before several controllers:
	// Controller alone then.
	Controllers []string          `json:"controllers,omitempty"`
	GossipKey   []byte            `json:"gossip_key"`
	GossipLabel string            `json:"gossip_label"`
	Labels      map[string]string `json:"labels,omitempty"`
	EnrolledAt  time.Time         `json:"enrolled_at"`

	// GossipKeyGeneration is the controller's generation of GossipKey: 0
	// for the key from enrollment until a welcome names its generation.
	GossipKeyGeneration uint64 `json:"gossip_key_generation,omitempty"`
}

// ControllerList is the controller addresses recorded at enrollment.
func (i Info) ControllerList() []string {
	if len(i.Controllers) > 0 {
		return i.Controllers
	}
	if i.Controller == "" {
		return nil
	}
	return []string{i.Controller}
}

// Identity is a loaded identity. The certificate can be swapped at runtime
// (renewal); TLS reads it through GetClientCertificate.
type Identity struct {
	Dir  string
	Info Info
	CA   *x509.Certificate

	mu         sync.RWMutex
	cert       *tls.Certificate
	receivedAt time.Time
	skew       time.Duration // controller clock minus this node's at skewAt (clock.go)
	skewAt     time.Time
}

// Exists reports whether dir holds an enrolled identity.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// Save writes a new identity (after enrollment) atomically, file by file,
// the state file last so a crash never leaves a half identity that loads.
func Save(dir string, info Info, key crypto.Signer, cert, ca *x509.Certificate) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, certFile), pki.EncodeCert(cert), 0o644); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, caFile), pki.EncodeCert(ca), 0o644); err != nil {
		return err
	}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, stateFile), data, 0o600)
}

// Load reads the identity from dir.
func Load(dir string) (*Identity, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("state dir %s holds no identity; enroll first with `ferry-agent enroll --controller HOST:PORT --token T --ca-pin sha256:HEX --state-dir %s`", dir, dir)
		}
		return nil, fmt.Errorf("read identity: %w", err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("identity %s: %w", filepath.Join(dir, stateFile), err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caFile))
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	ca, err := pki.DecodeCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", filepath.Join(dir, caFile), err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		// A crash between Replace's two renames leaves the new
		// certificate with the old key and the new key still in
		// node.key.new: finish the swap.
		newKey := filepath.Join(dir, keyFile+".new")
		if p2, err2 := tls.LoadX509KeyPair(filepath.Join(dir, certFile), newKey); err2 == nil {
			if err := os.Rename(newKey, filepath.Join(dir, keyFile)); err != nil {
				return nil, fmt.Errorf("finish an interrupted certificate renewal: %w", err)
			}
			pair, err = p2, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load node certificate: %w", err)
	}
	if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
		return nil, err
	}
	received := pair.Leaf.NotBefore
	if st, err := os.Stat(filepath.Join(dir, certFile)); err == nil {
		received = st.ModTime()
	}
	return &Identity{Dir: dir, Info: info, CA: ca, cert: &pair, receivedAt: received}, nil
}

// Certificate is the current certificate.
func (id *Identity) Certificate() *tls.Certificate {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.cert
}

// ReceivedAt is when the node got its current certificate, by this node's
// clock. Set against when the controller issued it, it estimates the clock
// skew until a welcome measures it (CheckClock).
func (id *Identity) ReceivedAt() time.Time {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.receivedAt
}

// Pool is a pool holding the pinned CA.
func (id *Identity) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(id.CA)
	return p
}

// Replace stores a renewed key and certificate and starts using them.
func (id *Identity) Replace(key crypto.Signer, cert *x509.Certificate) error {
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	// Write both next to the current files, then rename the certificate
	// and the key: a crash between the two renames leaves the new
	// certificate with node.key.new beside it, which Load completes.
	newKey, newCert := filepath.Join(id.Dir, keyFile+".new"), filepath.Join(id.Dir, certFile+".new")
	if err := atomicfile.WriteFile(newKey, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(newCert, pki.EncodeCert(cert), 0o644); err != nil {
		return err
	}
	if err := os.Rename(newCert, filepath.Join(id.Dir, certFile)); err != nil {
		return err
	}
	if err := os.Rename(newKey, filepath.Join(id.Dir, keyFile)); err != nil {
		return err
	}
	id.mu.Lock()
	id.cert = &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	id.receivedAt = time.Now()
	id.mu.Unlock()
	return nil
}
