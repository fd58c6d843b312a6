package install

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// fakeStream serves streamed bytes to the archive step and ends with the
// download's outcome; verified says whether the reader's bytes count as
// the verified file's.
type fakeStream struct {
	streamed []byte // what the reader gets
	path     string // the verified file, when err is nil
	err      error  // the download's outcome
	verified bool
	readers  int
}

type fakeReader struct {
	io.Reader
	s *fakeStream
}

func (fakeReader) Close() error     { return nil }
func (r fakeReader) Verified() bool { return r.s.verified && r.s.err == nil }

func (s *fakeStream) Reader() StreamReader {
	s.readers++
	return fakeReader{bytes.NewReader(s.streamed), s}
}
func (s *fakeStream) Wait(context.Context) (string, error) { return s.path, s.err }

// An archive extracted while its artifact downloads is switched in only
// when the whole file verified and the bytes extracted were that file's:
// a failed download leaves dest untouched and no staging tree, and a tree
// built from bytes that were not the verified file's is built again from
// the verified file.
func TestStreamedArchiveSwitchedInOnlyWhenVerified(t *testing.T) {
	good, digest := artifact(t, map[string]string{"tool/": "", "tool/VERSION": "1.0 verified"})
	lying, _ := artifact(t, map[string]string{"tool/": "", "tool/VERSION": "1.0 from discarded bytes"})
	lyingBytes, err := os.ReadFile(lying)
	must(t, err)
	goodBytes, err := os.ReadFile(good)
	must(t, err)
	p := pkg("tool", "1.0", digest, archiveStep("/opt/tool", 1), fileStep("/etc/tool.conf", "x", 0o644))

	t.Run("download fails", func(t *testing.T) {
		e := newEnv(t)
		s := &fakeStream{streamed: goodBytes[:len(goodBytes)/2], err: errors.New("artifact failed verification")}
		u := e.inst.Install(context.Background(), Request{JobID: "j1", RolloutID: "r1", Package: p, Stream: s}, nil, nil)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_FAILED)
		if u.GetFailedStep() != DownloadStep(p) {
			t.Errorf("failed step %q, want %q", u.GetFailedStep(), DownloadStep(p))
		}
		assertAbsent(t, e.path("opt/tool"))
		assertAbsent(t, e.path("etc/tool.conf"))
		assertNoLeftovers(t, e)
		if _, ok := e.inst.JobResult("j1"); ok {
			t.Error("the installer recorded a job whose streamed download failed; the agent records it (or resumes it after its own stop)")
		}
	})
	t.Run("bytes read were not the verified file's", func(t *testing.T) {
		e := newEnv(t)
		s := &fakeStream{streamed: lyingBytes, path: good, verified: false}
		u := e.inst.Install(context.Background(), Request{JobID: "j1", RolloutID: "r1", Package: p, Stream: s}, nil, nil)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED)
		if got := readFile(t, e.path("opt/tool/VERSION")); got != "1.0 verified" {
			t.Fatalf("dest holds %q: a tree built from unverified bytes was switched in", got)
		}
		assertNoLeftovers(t, e)
	})
	t.Run("verified", func(t *testing.T) {
		e := newEnv(t)
		s := &fakeStream{streamed: goodBytes, path: good, verified: true}
		u := e.inst.Install(context.Background(), Request{JobID: "j1", RolloutID: "r1", Package: p, Stream: s}, nil, nil)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED)
		if got := readFile(t, e.path("opt/tool/VERSION")); got != "1.0 verified" || s.readers != 1 {
			t.Fatalf("dest holds %q after %d streamed reads", got, s.readers)
		}
		assertNoLeftovers(t, e)
	})
}
