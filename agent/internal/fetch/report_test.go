package fetch

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

const damagedMessage = "artifact blob@1 (sha256:0123456789ab) is damaged on the controller (sha256 mismatch); re-push it"

// reportingController is the fake controller taking mismatch reports; it
// answers each with damaged.
type reportingController struct {
	*fakeController
	damaged bool
	mu      sync.Mutex
	reports []*ferryv1.ReportArtifactMismatchRequest
}

func (s *reportingController) ReportArtifactMismatch(_ context.Context, req *ferryv1.ReportArtifactMismatchRequest) (*ferryv1.ReportArtifactMismatchResponse, error) {
	s.mu.Lock()
	s.reports = append(s.reports, req)
	s.mu.Unlock()
	if s.damaged {
		return &ferryv1.ReportArtifactMismatchResponse{Damaged: true, Message: damagedMessage}, nil
	}
	return &ferryv1.ReportArtifactMismatchResponse{Message: "the controller's copy of artifact blob@1 matches its digest"}, nil
}

// damagedCopy serves a copy of data with one byte flipped under data's
// digest, as a controller with a damaged blob does.
func damagedCopy(fake *fakeController, data []byte) (digest, got string) {
	bad := bytes.Clone(data)
	bad[len(bad)/3] ^= 0x20
	fake.serveAs(digestOf(data), bytes.NewReader(bad))
	return digestOf(data), digestOf(bad)
}

func TestEnsureReportsMismatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		damaged  bool // what the controller finds when it hashes its copy
		attempts int  // downloads, each reported
		want     error
	}{
		// The controller's copy is damaged too: one download, then stop.
		{"controller copy damaged", true, 1, ErrDamaged},
		// The controller's copy is intact: the bytes changed on the way,
		// so the attempts go on.
		{"controller copy intact", false, 3, ErrVerify},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pkitest.New(t)
			fake := &reportingController{fakeController: newFake(), damaged: tc.damaged}
			data := randomBytes(11, 700000)
			digest, got := damagedCopy(fake.fakeController, data)
			dir := t.TempDir()
			f := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), func(c *Config) { c.Attempts = 3 })
			_, err := f.Ensure(context.Background(), digest, uint64(len(data)), nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.damaged && err.Error() != damagedMessage {
				t.Errorf("err = %q, want the controller's message %q", err, damagedMessage)
			}
			fake.idle(t)
			if served := fake.served.Load(); served != int64(tc.attempts*len(data)) {
				t.Errorf("served %d bytes, want %d downloads (%d)", served, tc.attempts, tc.attempts*len(data))
			}
			fake.mu.Lock()
			reports := fake.reports
			fake.mu.Unlock()
			if len(reports) != tc.attempts {
				t.Fatalf("%d reports, want one per download (%d)", len(reports), tc.attempts)
			}
			for _, r := range reports {
				if r.Digest != digest || r.GotDigest != got {
					t.Errorf("report %v, want digest %s and got %s", r, digest, got)
				}
			}
			for _, sub := range []string{"cache", "downloads"} {
				if got := entries(t, filepath.Join(dir, sub)); len(got) != 0 {
					t.Errorf("%s holds %v after a failed verification", sub, got)
				}
			}
		})
	}
}

// quarantiningController refuses every download as a controller refuses
// a quarantined artifact.
type quarantiningController struct {
	*fakeController
}

func (s *quarantiningController) DownloadArtifact(req *ferryv1.DownloadArtifactRequest, _ grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error {
	s.streams.Add(1)
	return status.Error(codes.FailedPrecondition, damagedMessage)
}

func TestEnsureQuarantinedArtifact(t *testing.T) {
	p := pkitest.New(t)
	fake := &quarantiningController{fakeController: newFake()}
	digest := digestOf([]byte("blob"))
	_, err := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), nil).Ensure(context.Background(), digest, 4, nil)
	if !errors.Is(err, ErrDamaged) || err.Error() != damagedMessage || strings.Contains(err.Error(), "rpc error") {
		t.Fatalf("err = %v, want the controller's message alone, matching ErrDamaged", err)
	}
	if n := fake.streams.Load(); n != 1 {
		t.Errorf("%d download streams, want 1: a quarantined artifact is not retried", n)
	}
}
