package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// auditedStore is a store holding a token, an artifact and a node for the
// audited methods to change.
func auditedStore(t *testing.T, backend string, now time.Time) *Store {
	t.Helper()
	s := openBackend(t, backend)
	if err := s.PutToken(TokenRecord{ID: "tok001", Group: "staging", ExpiresAt: now.Add(time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PutArtifact(&ferryv1.Artifact{Name: "old", Version: "1", Digest: "sha256:aa"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PutNode(NodeRecord{ID: "n1", Group: "staging", EnrolledAt: now}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// dump is every bucket's sequence and records, to tell whether a call
// changed anything.
func dump(t *testing.T, s *Store) string {
	t.Helper()
	if s.db == nil {
		return dumpEtcd(t, s)
	}
	var b strings.Builder
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			fmt.Fprintf(&b, "%s seq=%d\n", name, bk.Sequence())
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "  %q=%x\n", k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Every audited method writes its change and its entry together: with
// the audit log failing it returns ErrAudit and the store is byte for byte
// what it was; once the log works it makes the change and writes exactly
// that one entry.
func TestAuditedChangesWriteTheirEntryOrNothing(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	ok := func(TokenRecord) error { return nil }
	cases := []struct {
		name   string
		change func(s *Store, ev *ferryv1.AuditEvent) error
	}{
		{"token create", func(s *Store, ev *ferryv1.AuditEvent) error {
			return s.PutToken(TokenRecord{ID: "tok002", Group: "production", ExpiresAt: now.Add(time.Hour)}, ev)
		}},
		{"token revoke", func(s *Store, ev *ferryv1.AuditEvent) error { _, err := s.RevokeToken("tok001", ev); return err }},
		{"admin revoke", func(s *Store, ev *ferryv1.AuditEvent) error { return s.RevokeAdmin("bob", now, ev) }},
		{"package apply", func(s *Store, ev *ferryv1.AuditEvent) error {
			_, err := s.AddPackage(&ferryv1.Package{Name: "go", Version: "1.20.3"}, ev)
			return err
		}},
		{"artifact push", func(s *Store, ev *ferryv1.AuditEvent) error {
			return s.PutArtifact(&ferryv1.Artifact{Name: "go", Version: "1.20.3", Digest: "sha256:bb"}, ev)
		}},
		{"artifact rm", func(s *Store, ev *ferryv1.AuditEvent) error { _, err := s.DeleteArtifact("old@1", ev); return err }},
		{"node remove", func(s *Store, ev *ferryv1.AuditEvent) error {
			return s.PutNode(NodeRecord{ID: "n1", Group: "staging", EnrolledAt: now, Removed: true, RemovedAt: now, RemovedBy: "admin/alice"}, ev)
		}},
		{"rollout", func(s *Store, ev *ferryv1.AuditEvent) error { return s.SaveRollout(&ferryv1.Rollout{Id: "ro-1"}, ev) }},
		{"enroll", func(s *Store, ev *ferryv1.AuditEvent) error {
			_, err := s.EnrollNode("tok001", ok, now, func(t TokenRecord) (NodeRecord, error) {
				return NodeRecord{ID: "n2", Group: t.Group, EnrolledAt: now, TokenID: t.ID}, nil
			}, ev)
			return err
		}},
	}
	diskFull := errors.New("write ferry.db: no space left on device")
	eachBackend(t, func(t *testing.T, backend string) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := auditedStore(t, backend, now)
				ev := &ferryv1.AuditEvent{Actor: "admin/alice", Action: tc.name, Target: "x", Outcome: "ok"}
				before := dump(t, s)
				s.FailAuditWrites(diskFull)
				err := tc.change(s, ev)
				want := "could not record the audit entry: " + diskFull.Error() + "; nothing was changed"
				if !errors.Is(err, ErrAudit) || !errors.Is(err, diskFull) || err.Error() != want {
					t.Fatalf("with the audit log failing: %v, want %q", err, want)
				}
				if after := dump(t, s); after != before {
					t.Errorf("a failed audit write left changes:\nbefore\n%s\nafter\n%s", before, after)
				}

				s.FailAuditWrites(nil)
				if err := tc.change(s, ev); err != nil {
					t.Fatal(err)
				}
				if dump(t, s) == before {
					t.Error("nothing changed")
				}
				evs, err := s.AuditEvents(0)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != 1 || !proto.Equal(evs[0], ev) {
					t.Errorf("audit log %v, want only %v", evs, ev)
				}
			})
		}
	})
}

// A change that finds nothing to do, and one that is refused, write no
// entry: their callers record the outcome.
func TestUnchangedAndRefusedWriteNoEntry(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	eachBackend(t, func(t *testing.T, backend string) {
		s := auditedStore(t, backend, now)
		ev := &ferryv1.AuditEvent{Actor: "admin/alice", Action: "x", Outcome: "ok"}
		if _, err := s.AddPackage(&ferryv1.Package{Name: "go", Version: "1", Artifact: &ferryv1.ArtifactRef{Digest: "sha256:aa"}}, nil); err != nil {
			t.Fatal(err)
		}
		before := dump(t, s)
		if existing, err := s.AddPackage(&ferryv1.Package{Name: "go", Version: "1"}, ev); err != nil || existing == nil {
			t.Errorf("AddPackage of an existing version = %v, %v; want the existing one", existing, err)
		}
		if used, err := s.DeleteArtifact("old@1", ev); err != nil || len(used) != 1 {
			t.Errorf("DeleteArtifact of a used artifact = %v, %v; want its user", used, err)
		}
		if _, err := s.RevokeToken("nope", ev); !errors.Is(err, ErrNotFound) || errors.Is(err, ErrAudit) {
			t.Errorf("RevokeToken of an unknown token = %v, want ErrNotFound", err)
		}
		if after := dump(t, s); after != before {
			t.Errorf("store changed:\nbefore\n%s\nafter\n%s", before, after)
		}
	})
}
