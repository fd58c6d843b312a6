package store

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// fillEveryKind writes records of every kind the store keeps.
func fillEveryKind(t *testing.T, s *Store, now time.Time) {
	t.Helper()
	ev := func(action string) *ferryv1.AuditEvent {
		return &ferryv1.AuditEvent{Actor: "admin/alice", Action: action, Target: "x", Outcome: "ok"}
	}
	steps := []error{
		s.PutToken(TokenRecord{ID: "tok001", Group: "web", ExpiresAt: now.Add(time.Hour), MaxUses: 5, Labels: map[string]string{"site": "a"}}, ev("token create")),
		s.PutNode(NodeRecord{ID: "web-1", Group: "web", EnrolledAt: now, TokenID: "tok001", CertSerials: []string{"1f"}, CertExpiresAt: now.Add(24 * time.Hour)}, ev("node add")),
		s.PutNode(NodeRecord{ID: "web-2", Group: "web", Removed: true, RemovedAt: now, RemovedBy: "admin/alice"}, nil),
		s.RevokeAdmin("bob", now, ev("admin revoke")),
		s.PutArtifact(&ferryv1.Artifact{Name: "go", Version: "1.22", Digest: "sha256:aa", Size: 10}, ev("artifact push")),
		s.SaveRollout(&ferryv1.Rollout{Id: "r1", PackageName: "go", PackageVersion: "1.22"}, ev("rollout")),
		s.SaveGroup(&ferryv1.GroupRecord{Name: "web"}, nil),
		s.PutMirror(&ferryv1.Mirror{Group: "web", UrlPrefix: "https://mirror.example/"}, ev("mirror set")),
		s.AppendAudit(ev("refused")),
		s.kv.Update(func(tx kvTx) error { // output kept before records (schema 1 era)
			return tx.Bucket(bucketJobLogs).Put([]byte("r0/web-1"), []byte("old line\n"))
		}),
	}
	_, err := s.AddPackage(&ferryv1.Package{Name: "go", Version: "1.22", Artifact: &ferryv1.ArtifactRef{Digest: "sha256:aa"}}, ev("package apply"))
	steps = append(steps, err)
	for _, job := range []string{"j1", "j2"} {
		_, err := s.AppendJobLog("r1", "web-1", job, lines(1, 40, job), now, 0)
		steps = append(steps, err)
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

// everything reads every record through the typed methods.
func everything(t *testing.T, s *Store) map[string]any {
	t.Helper()
	out := map[string]any{}
	var err error
	check := func(what string, v any, e error) {
		if e != nil && err == nil {
			err = e
		}
		out[what] = v
	}
	nodes, e := s.Nodes()
	check("nodes", nodes, e)
	toks, e := s.Tokens()
	check("tokens", toks, e)
	admins, e := s.RevokedAdmins()
	check("admins", admins, e)
	arts, e := s.Artifacts()
	check("artifacts", arts, e)
	pkgs, e := s.Packages("")
	check("packages", pkgs, e)
	rolls, e := s.Rollouts()
	check("rollouts", rolls, e)
	groups, e := s.Groups()
	check("groups", groups, e)
	mirrors, e := s.Mirrors()
	check("mirrors", mirrors, e)
	audit, e := s.AuditEvents(0)
	check("audit", audit, e)
	logs, e := s.JobLogs("r1", "web-1")
	check("joblogs r1", logs, e)
	legacy, e := s.JobLogs("r0", "web-1")
	check("joblogs r0", legacy, e)
	counts, e := s.Count()
	check("counts", counts, e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalRecords(a, b any) bool {
	return reflect.DeepEqual(a, b) || protoSlicesEqual(a, b)
}

func protoSlicesEqual(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() != reflect.Slice || vb.Kind() != reflect.Slice || va.Len() != vb.Len() {
		return false
	}
	for i := range va.Len() {
		ma, ok1 := va.Index(i).Interface().(proto.Message)
		mb, ok2 := vb.Index(i).Interface().(proto.Message)
		if !ok1 || !ok2 || !proto.Equal(ma, mb) {
			return false
		}
	}
	return true
}

// A bbolt store with every kind of record, copied into etcd: the check
// finds every record identical, the typed methods read the same on both,
// and the audit log goes on numbering after the copied entries.
func TestMigrateBboltToEtcdKeepsEveryRecord(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	src := openBackend(t, "bbolt")
	fillEveryKind(t, src, now)
	dst := openBackend(t, "etcd")
	if empty, err := dst.Empty(); err != nil || !empty {
		t.Fatalf("new etcd prefix: empty %v, %v", empty, err)
	}
	counts, err := src.CopyInto(dst)
	if err != nil {
		t.Fatal(err)
	}
	byDomain := map[string]int{}
	total := 0
	for _, c := range counts {
		byDomain[c.Domain] = c.Records
		total += c.Records
	}
	if byDomain["nodes"] != 2 || byDomain["tokens"] != 1 || byDomain["audit"] != 8 || byDomain["joblines"] != 82 {
		t.Errorf("copied per domain %v; want 2 nodes, 1 token, 8 audit entries, 82 job log records (40 lines and a meta per job)", byDomain)
	}
	identical, diffs, err := Compare(src, dst, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 0 || identical != total {
		t.Fatalf("migrate check: %d identical of %d copied, differences %v", identical, total, diffs)
	}
	want, got := everything(t, src), everything(t, dst)
	for k := range want {
		if !equalRecords(want[k], got[k]) {
			t.Errorf("%s on bbolt:\n%v\non etcd:\n%v", k, want[k], got[k])
		}
	}
	if empty, _ := dst.Empty(); empty {
		t.Error("Empty says the copy is empty")
	}

	if err := dst.AppendAudit(&ferryv1.AuditEvent{Actor: "admin/alice", Action: "after", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	evs, err := dst.AuditEvents(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 9 || evs[0].GetAction() != "after" {
		t.Errorf("after one more entry the etcd audit log has %d entries, newest %q; want 9, newest \"after\" (the sequence carried on)", len(evs), evs[0].GetAction())
	}
}

// The check names a record that differs.
func TestCompareNamesWhatDiffers(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	src := openBackend(t, "bbolt")
	fillEveryKind(t, src, now)
	dst := openBackend(t, "etcd")
	if _, err := src.CopyInto(dst); err != nil {
		t.Fatal(err)
	}
	if err := dst.PutNode(NodeRecord{ID: "web-1", Group: "db"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := dst.SaveGroup(&ferryv1.GroupRecord{Name: "db"}, nil); err != nil {
		t.Fatal(err)
	}
	_, diffs, err := Compare(src, dst, 10)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(diffs, "\n")
	if len(diffs) != 2 || !strings.Contains(got, `"nodes"/"web-1": differs`) || !strings.Contains(got, `"groups"/"db": only in the copy`) {
		t.Fatalf("differences:\n%s\nwant web-1 differing and group db only in the copy", got)
	}
}
