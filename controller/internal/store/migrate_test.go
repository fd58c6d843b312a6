package store

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// copyFixture copies a store from testdata into a temp dir: Open writes.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ferry.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testdata/v1-json.db was written by the controller before records were
// all protobuf: nodes and tokens as JSON, admin revocations as text.
func TestOpenConvertsAJSONStore(t *testing.T) {
	path := copyFixture(t, "v1-json.db")
	at := time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)
	for i := range 2 { // the second open finds the store converted
		s, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		tokens, err := s.Tokens()
		if err != nil {
			t.Fatal(err)
		}
		wantTokens := []TokenRecord{
			{ID: "tok002", SecretHash: []byte{5, 6}, Group: "staging", ExpiresAt: at.Add(2 * time.Hour), Revoked: true, CreatedAt: at.Add(time.Minute), CreatedBy: "admin/bob"},
			{ID: "tok001", SecretHash: []byte{1, 2, 3, 4}, Group: "production", ExpiresAt: at.Add(time.Hour), MaxUses: 10, Uses: 2, CreatedAt: at, CreatedBy: "admin/alice"},
		}
		if !reflect.DeepEqual(tokens, wantTokens) {
			t.Errorf("tokens:\n got %+v\nwant %+v", tokens, wantTokens)
		}
		nodes, err := s.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		wantNodes := []NodeRecord{
			{ID: "web-01", Group: "production", Labels: map[string]string{"os": "linux", "rack": "a1"}, EnrolledAt: at, TokenID: "tok001",
				CertSerials: []string{"1f", "2e"}, CertExpiresAt: at.Add(720 * time.Hour), LastConnectedAt: at.Add(time.Minute)},
			{ID: "web-02", Group: "production", EnrolledAt: at, TokenID: "tok001", CertSerials: []string{"3d"}, CertExpiresAt: at.Add(720 * time.Hour),
				Removed: true, RemovedAt: at.Add(time.Hour), RemovedBy: "admin/alice"},
		}
		if !reflect.DeepEqual(nodes, wantNodes) {
			t.Errorf("nodes:\n got %+v\nwant %+v", nodes, wantNodes)
		}
		admins, err := s.RevokedAdmins()
		if err != nil || len(admins) != 1 || !admins["mallory"].Equal(at.Add(30*time.Minute)) {
			t.Errorf("revoked admins = %v, %v; want mallory at %s", admins, err, at.Add(30*time.Minute))
		}
		// Records that were protobuf already read as before.
		if p, err := s.Package("go", "1.20.3"); err != nil || p.GetArtifact().GetName() != "go1.20.3.linux-amd64.tar.gz" {
			t.Errorf("package go@1.20.3 = %v, %v", p, err)
		}
		if a, err := s.Artifact("go1.20.3.linux-amd64.tar.gz@1.20.3"); err != nil || a.GetSize() != 100 {
			t.Errorf("artifact = %v, %v", a, err)
		}
		if rs, err := s.Rollouts(); err != nil || len(rs) != 1 || rs[0].GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Errorf("rollouts = %v, %v", rs, err)
		}
		if evs, err := s.AuditEvents(0); err != nil || len(evs) != 1 || evs[0].GetAction() != "token.create" {
			t.Errorf("audit = %v, %v", evs, err)
		}
		if recs, err := s.JobLogs("ro-1", "web-01"); err != nil || len(recs) != 1 || recs[0].GetText() != "installed go 1.20.3" {
			t.Errorf("job log = %v, %v", recs, err)
		}
		// What is stored now is protobuf.
		if err := s.db.View(func(tx *bolt.Tx) error {
			for _, c := range []struct {
				bucket []byte
				m      proto.Message
			}{{bucketNodes, &ferryv1.NodeRecord{}}, {bucketTokens, &ferryv1.TokenRecord{}}, {bucketRevokedAdmins, &ferryv1.AdminRevocation{}}} {
				if err := tx.Bucket(c.bucket).ForEach(func(k, v []byte) error {
					if v[0] == '{' || proto.Unmarshal(v, c.m) != nil {
						t.Errorf("%s/%s is still stored as %q", c.bucket, k, v)
					}
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}
