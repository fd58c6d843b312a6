package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

const (
	stateOK      = ferryv1.ArtifactState_ARTIFACT_STATE_OK
	stateDamaged = ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED
)

// blobFile is where the blob of digest lies.
func (h *harness) blobFile(digest string) string {
	return filepath.Join(h.st.BlobDir(), strings.TrimPrefix(digest, sha256digest.Prefix))
}

// flip flips one byte of digest's stored blob, as a failing disk does,
// and returns what the blob hashes to then.
func (h *harness) flip(digest string) string {
	h.t.Helper()
	path := h.blobFile(digest)
	b, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatal(err)
	}
	b[len(b)/2] ^= 0x04
	if err := os.WriteFile(path, b, 0o600); err != nil {
		h.t.Fatal(err)
	}
	return sha(b)
}

// verify runs VerifyArtifacts and returns its responses.
func (h *harness) verify(ref string, all bool) ([]*ferryv1.VerifyArtifactsResponse, error) {
	stream, err := h.artifacts().VerifyArtifacts(context.Background(), &ferryv1.VerifyArtifactsRequest{Ref: ref, All: all})
	if err != nil {
		return nil, err
	}
	var out []*ferryv1.VerifyArtifactsResponse
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

func (h *harness) record(key string) *ferryv1.Artifact {
	h.t.Helper()
	a, err := h.db.Artifact(key)
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

func (h *harness) report(digest, got string) (*ferryv1.ReportArtifactMismatchResponse, error) {
	return ferryv1.NewAgentServiceClient(h.agent).ReportArtifactMismatch(context.Background(), &ferryv1.ReportArtifactMismatchRequest{Digest: digest, GotDigest: got})
}

// checkRefused asserts a download of digest is refused as damaged, with
// the artifact and the fix named, and sends no byte.
func (h *harness) checkRefused(digest, name string) {
	h.t.Helper()
	before := h.served.n.Load()
	_, err := h.download(context.Background(), digest, 0)
	if status.Code(err) != codes.FailedPrecondition {
		h.t.Fatalf("download of a damaged artifact: %v, want FailedPrecondition", err)
	}
	msg := status.Convert(err).Message()
	for _, w := range []string{"artifact " + name, "is damaged on the controller (sha256 mismatch", "re-push it", "ferryctl artifact push"} {
		if !strings.Contains(msg, w) {
			h.t.Errorf("refusal %q does not say %q", msg, w)
		}
	}
	if n := h.served.n.Load() - before; n != 0 {
		h.t.Errorf("%d bytes of a damaged artifact were served", n)
	}
}

func (h *harness) checkDownload(digest string, want []byte) {
	h.t.Helper()
	got, err := h.download(context.Background(), digest, 0)
	if err != nil || !bytes.Equal(got, want) {
		h.t.Fatalf("download: %d bytes, %v; want the pushed bytes", len(got), err)
	}
}

// Verify finds the flipped byte, reports both digests, and quarantines
// every record sharing the blob; the others stay ok and served.
func TestVerifyFindsFlippedByte(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	goData, toolData := randomBytes(20, 2*artifact.ChunkSize+5), randomBytes(21, 1000)
	goDigest, toolDigest := sha(goData), sha(toolData)
	for _, p := range []struct {
		name, version string
		data          []byte
	}{{"go.tar.gz", "1.20.3", goData}, {"go.tar.gz", "1.20.3-b", goData}, {"tool", "1", toolData}} {
		resp, err := h.push(p.name, p.version, p.data, sha(p.data))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Artifact.State != stateOK || resp.Artifact.CheckedAt == nil {
			t.Fatalf("a pushed artifact is %s, checked at %v; want ok and when", resp.Artifact.State, resp.Artifact.CheckedAt)
		}
	}
	got := h.flip(goDigest)

	res, err := h.verify("", true)
	if err != nil {
		t.Fatal(err)
	}
	type line struct{ key, state, got string }
	var lines []line
	for _, r := range res {
		lines = append(lines, line{artifact.Key(r.Artifact), r.Artifact.State.String(), r.GotDigest})
		if r.Error != "" {
			t.Errorf("%s: error %q", artifact.Key(r.Artifact), r.Error)
		}
	}
	want := []line{
		{"go.tar.gz@1.20.3", stateDamaged.String(), got},
		{"go.tar.gz@1.20.3-b", stateDamaged.String(), got},
		{"tool@1", stateOK.String(), toolDigest},
	}
	if len(lines) != len(want) {
		t.Fatalf("verify = %v, want %v", lines, want)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("verify[%d] = %v, want %v", i, lines[i], want[i])
		}
	}
	if a := h.record("go.tar.gz@1.20.3"); a.State != stateDamaged || a.StoredDigest != got || a.Digest != goDigest {
		t.Errorf("record after verify = %v, want damaged with the stored digest", a)
	}
	h.checkRefused(goDigest, "go.tar.gz@1.20.3")
	h.checkDownload(toolDigest, toolData)
	if n, err := h.st.Damaged(); err != nil || n != 2 {
		t.Errorf("Damaged() = %d, %v; want 2", n, err)
	}
	list, err := h.artifacts().ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{Name: "go.tar.gz"})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list.Artifacts {
		if a.State != stateDamaged {
			t.Errorf("list shows %s as %s", artifact.Key(a), a.State)
		}
	}

	// One artifact by reference; neither or both is refused.
	if res, err := h.verify("tool@1", false); err != nil || len(res) != 1 || res[0].Artifact.State != stateOK {
		t.Errorf("verify tool@1 = %v, %v", res, err)
	}
	for _, bad := range []struct {
		ref string
		all bool
	}{{"", false}, {"tool@1", true}} {
		if _, err := h.verify(bad.ref, bad.all); status.Code(err) != codes.InvalidArgument {
			t.Errorf("verify %q all=%v: %v, want InvalidArgument", bad.ref, bad.all, err)
		}
	}
	if _, err := h.verify("nope@1", false); status.Code(err) != codes.NotFound {
		t.Errorf("verify of an unknown artifact: %v, want NotFound", err)
	}
	ev := h.audit.list()
	if !slicesContain(ev, "admin/alice artifact.verify all ok") || !slicesContain(ev, "admin/alice artifact.verify tool@1 ok") {
		t.Errorf("audit = %q, want the verifications", ev)
	}
}

func slicesContain(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// A push of the same bytes replaces the damaged copy and serves every
// record sharing it again, whether it names the damaged artifact, another
// name, or declares no checksum.
func TestPushRestoresDamaged(t *testing.T) {
	for _, tc := range []struct {
		name, version string
		declare       bool
	}{
		{"go.tar.gz", "1.20.3", true},
		{"go.tar.gz", "1.20.3", false},
		{"go-mirror.tar.gz", "1.20.3", true},
	} {
		t.Run(tc.name+"@"+tc.version+map[bool]string{true: " with checksum", false: " without checksum"}[tc.declare], func(t *testing.T) {
			h := newHarness(t, harnessOpts{})
			data := randomBytes(30, artifact.ChunkSize+77)
			digest := sha(data)
			if _, err := h.push("go.tar.gz", "1.20.3", data, digest); err != nil {
				t.Fatal(err)
			}
			h.flip(digest)
			if _, err := h.verify("go.tar.gz@1.20.3", false); err != nil {
				t.Fatal(err)
			}
			h.checkRefused(digest, "go.tar.gz@1.20.3")

			sum := ""
			if tc.declare {
				sum = digest
			}
			resp, err := h.push(tc.name, tc.version, data, sum)
			if err != nil {
				t.Fatal(err)
			}
			if !resp.Restored || !resp.Created || resp.Artifact.State != stateOK || resp.Artifact.StoredDigest != "" {
				t.Fatalf("push of the damaged bytes = %v, want restored and ok", resp)
			}
			if a := h.record("go.tar.gz@1.20.3"); a.State != stateOK || a.PushedBy != "admin/alice" {
				t.Errorf("record after the restore = %v, want ok", a)
			}
			if evs, err := h.db.AuditEvents(1); err != nil || len(evs) != 1 || evs[0].Action != "artifact.push" || !strings.Contains(evs[0].Detail, "restored=true") {
				t.Errorf("last audit entry = %v, %v; want the push, restored", evs, err)
			}
			h.checkDownload(digest, data)
			h.checkConsistent()
			if n, _ := h.st.Damaged(); n != 0 {
				t.Errorf("%d damaged after the restore", n)
			}
			// Once restored, the same push is a no-op again.
			if again, err := h.push("go.tar.gz", "1.20.3", data, digest); err != nil || again.Created || again.Restored {
				t.Errorf("push after the restore = %v, %v; want unchanged", again, err)
			}
		})
	}
}

// A missing blob file is damaged too, and a push brings it back.
func TestVerifyMissingBlob(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(31, 4000)
	digest := sha(data)
	if _, err := h.push("tool", "1", data, digest); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.blobFile(digest)); err != nil {
		t.Fatal(err)
	}
	res, err := h.verify("tool@1", false)
	if err != nil || len(res) != 1 {
		t.Fatalf("verify = %v, %v", res, err)
	}
	if r := res[0]; r.Artifact.State != stateDamaged || r.GotDigest != "" || !strings.Contains(r.Error, "missing") {
		t.Errorf("verify of a missing blob = %v, want damaged, saying it is missing", r)
	}
	if resp, err := h.push("tool", "1", data, digest); err != nil || !resp.Restored {
		t.Fatalf("push = %v, %v; want restored", resp, err)
	}
	h.checkDownload(digest, data)
	h.checkConsistent()
}

// A node's report about a damaged blob quarantines it at once: the next
// agent gets the refusal without a byte sent.
func TestMismatchReportQuarantines(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(32, artifact.ChunkSize+9)
	digest := sha(data)
	if _, err := h.push("go.tar.gz", "1.20.3", data, digest); err != nil {
		t.Fatal(err)
	}
	got := h.flip(digest)
	resp, err := h.report(digest, got)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Damaged || !strings.Contains(resp.Message, "artifact go.tar.gz@1.20.3") || !strings.Contains(resp.Message, "re-push it") {
		t.Fatalf("report = %v, want damaged, naming the artifact and the fix", resp)
	}
	if a := h.record("go.tar.gz@1.20.3"); a.State != stateDamaged || a.StoredDigest != got {
		t.Errorf("record = %v, want damaged", a)
	}
	h.checkRefused(digest, "go.tar.gz@1.20.3")
	// Further reports are answered from the record.
	if resp, err := h.report(digest, got); err != nil || !resp.Damaged {
		t.Errorf("second report = %v, %v", resp, err)
	}
}

// A hostile node reporting mismatches about a good blob quarantines
// nothing and makes the controller hash the blob at most once per
// recheck interval.
func TestHostileMismatchReport(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	h.st.SetNow(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	data := randomBytes(33, artifact.ChunkSize+9)
	digest := sha(data)
	if _, err := h.push("go.tar.gz", "1.20.3", data, digest); err != nil {
		t.Fatal(err)
	}
	checkedAt := func() time.Time { return h.record("go.tar.gz@1.20.3").CheckedAt.AsTime() }

	advance(time.Second)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := h.report(digest, sha([]byte("lies")))
			if err != nil || resp.Damaged || !strings.Contains(resp.Message, "matches its digest") {
				t.Errorf("report about a good blob = %v, %v; want not damaged", resp, err)
			}
		}()
	}
	wg.Wait()
	first := checkedAt()
	if !first.Equal(now) {
		t.Errorf("checked at %v, want the blob hashed once when reported (%v)", first, now)
	}
	advance(30 * time.Second)
	if resp, err := h.report(digest, "garbage"); err != nil || resp.Damaged {
		t.Errorf("report = %v, %v", resp, err)
	}
	if !checkedAt().Equal(first) {
		t.Errorf("a report within the recheck interval hashed the blob again (checked at %v)", checkedAt())
	}
	advance(artifact.DefaultRecheckEvery)
	if _, err := h.report(digest, "garbage"); err != nil {
		t.Fatal(err)
	}
	if !checkedAt().Equal(now) {
		t.Errorf("checked at %v after the interval, want hashed again (%v)", checkedAt(), now)
	}
	if a := h.record("go.tar.gz@1.20.3"); a.State != stateOK {
		t.Errorf("a good blob is %s after hostile reports", a.State)
	}
	h.checkDownload(digest, data)

	for _, tc := range []struct {
		digest string
		code   codes.Code
	}{
		{sha([]byte("not stored")), codes.NotFound},
		{"md5:abc", codes.InvalidArgument},
	} {
		if _, err := h.report(tc.digest, ""); status.Code(err) != tc.code {
			t.Errorf("report of %q: %v, want %s", tc.digest, err, tc.code)
		}
	}
	// Only agents report.
	_, err := ferryv1.NewAgentServiceClient(h.admin).ReportArtifactMismatch(context.Background(), &ferryv1.ReportArtifactMismatchRequest{Digest: digest})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("report with an admin certificate: %v, want PermissionDenied", err)
	}
}

// The check after start finds a blob damaged while the controller was
// down, before any agent asks for it.
func TestVerifyStoredAfterStart(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data, other := randomBytes(34, 3000), randomBytes(35, 3000)
	for i, d := range [][]byte{data, other} {
		if _, err := h.push("tool", []string{"1", "2"}[i], d, sha(d)); err != nil {
			t.Fatal(err)
		}
	}
	h.flip(sha(data))
	h.open(harnessOpts{}) // the controller restarts
	h.st.VerifyStored(context.Background())
	if a := h.record("tool@1"); a.State != stateDamaged {
		t.Errorf("tool@1 is %s after the check at start, want damaged", a.State)
	}
	if a := h.record("tool@2"); a.State != stateOK {
		t.Errorf("tool@2 is %s after the check at start, want ok", a.State)
	}
}

// A node reports only about its own jobs' artifacts: another node's
// report about the same damaged blob is refused and hashes nothing.
func TestMismatchReportOnlyWithAJob(t *testing.T) {
	data := randomBytes(36, 5000)
	digest := sha(data)
	h := newHarness(t, harnessOpts{jobs: nodeJobs{"prod-1": {digest}}})
	if _, err := h.push("tool", "1", data, digest); err != nil {
		t.Fatal(err)
	}
	pushed := h.record("tool@1").CheckedAt.AsTime()
	got := h.flip(digest)
	req := &ferryv1.ReportArtifactMismatchRequest{Digest: digest, GotDigest: got}
	_, err := h.dialAgent("stage-1").ReportArtifactMismatch(context.Background(), req)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report without a job: %v, want PermissionDenied", err)
	}
	if a := h.record("tool@1"); a.State != stateOK || !a.CheckedAt.AsTime().Equal(pushed) {
		t.Errorf("record after a refused report = %v, want untouched", a)
	}
	resp, err := h.dialAgent("prod-1").ReportArtifactMismatch(context.Background(), req)
	if err != nil || !resp.Damaged {
		t.Fatalf("report of the node with the job = %v, %v; want damaged", resp, err)
	}
}
