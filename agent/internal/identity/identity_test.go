package identity

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/pki"
)

func newIdentity(t *testing.T) (*Identity, *pki.CA) {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	cert, err := ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: key.Public(), TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Save(dir, Info{NodeID: "n1", Group: "g"}, key, cert, ca.Cert); err != nil {
		t.Fatal(err)
	}
	id, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id, ca
}

// A crash between Replace's two renames (new certificate, old key) is
// completed by the next Load instead of bricking the agent.
func TestLoadFinishesInterruptedRenewal(t *testing.T) {
	id, ca := newIdentity(t)
	key, _ := pki.NewKey()
	cert, _ := ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: key.Public(), TTL: time.Hour, Now: time.Now()})
	keyPEM, _ := pki.EncodeKey(key)
	// What Replace leaves after its first rename.
	if err := os.WriteFile(filepath.Join(id.Dir, "node.key.new"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(id.Dir, "node.crt"), pki.EncodeCert(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(id.Dir)
	if err != nil {
		t.Fatalf("Load after an interrupted renewal: %v", err)
	}
	if got.Certificate().Leaf.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Errorf("loaded certificate is not the renewed one")
	}
	if _, err := os.Stat(filepath.Join(id.Dir, "node.key.new")); !os.IsNotExist(err) {
		t.Errorf("node.key.new still there: %v", err)
	}
}

func TestReplace(t *testing.T) {
	id, ca := newIdentity(t)
	key, _ := pki.NewKey()
	cert, _ := ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: key.Public(), TTL: time.Hour, Now: time.Now()})
	if err := id.Replace(key, cert); err != nil {
		t.Fatal(err)
	}
	again, err := Load(id.Dir)
	if err != nil || again.Certificate().Leaf.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Fatalf("reload after Replace: %v", err)
	}
}
