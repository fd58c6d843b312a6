package identity

import (
	"bytes"
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

// A gossip key from the controller is stored with its generation and
// survives a restart; sending it again writes nothing.
func TestSetGossipKey(t *testing.T) {
	id, _ := newIdentity(t)
	key := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name        string
		key         []byte
		generation  uint64
		wantChanged bool
	}{
		{"a new key", key, 2, true},
		{"the same key again", key, 2, false},
		{"the same key, generation named", key, 3, false},
		{"another key", bytes.Repeat([]byte{8}, 32), 4, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed, err := id.SetGossipKey(tt.key, tt.generation)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			again, err := Load(id.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if k, gen := again.GossipKey(); !bytes.Equal(k, tt.key) || gen != tt.generation {
				t.Errorf("after a restart: key %x generation %d, want %x generation %d", k, gen, tt.key, tt.generation)
			}
			if again.Info.NodeID != "n1" || again.Info.Group != "g" {
				t.Errorf("the rest of the identity changed: %+v", again.Info)
			}
		})
	}
}
