package install

import (
	"context"
	"io"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// ArtifactStream is an artifact still downloading (fetch.Download): an
// archive step extracts it while it arrives, into its staging tree beside
// dest, and switches that tree in only after Wait verified the whole file
// and the bytes the extraction read are that file's.
type ArtifactStream interface {
	// Reader reads the artifact from its first byte as it arrives.
	Reader() StreamReader
	// Wait waits for the download and its verification and returns the
	// verified file.
	Wait(ctx context.Context) (string, error)
}

// StreamReader is a reader of a downloading artifact.
type StreamReader interface {
	io.ReadCloser
	// Verified, once Wait returned the verified file, reports whether
	// every byte read came from that very file (the download did not start
	// over from nothing while it was read).
	Verified() bool
}

// awaitArtifact waits for a streamed artifact's verification, once; the
// verified file is the job's artifact from then on.
func (jc *jobCtx) awaitArtifact() error {
	if jc.stream == nil {
		return nil
	}
	path, err := jc.stream.Wait(jc.ctx)
	if err != nil {
		return &DownloadError{Err: err}
	}
	jc.artifact, jc.stream = path, nil
	if jc.j != nil && jc.j.Downloading {
		jc.j.Downloading = false
		return jc.j.save()
	}
	return nil
}

// DownloadError is a streamed artifact's failed download. Install does
// not record a job that failed with one (Request.Stream): its caller
// records it as it records a download that failed before Install.
type DownloadError struct{ Err error }

func (e *DownloadError) Error() string { return e.Err.Error() }
func (e *DownloadError) Unwrap() error { return e.Err }

// DownloadStep is the failed step of a job whose artifact could not be
// downloaded, as its result names it.
func DownloadStep(p *ferryv1.Package) string { return "download " + p.GetArtifact().GetName() }

// TakesTranscoded reports whether the package may be given its artifact's
// zstd form instead of the original (Request.ArtifactFormat): every step
// that uses the artifact extracts it as a tar or tar.gz archive, whose tar
// stream the zstd form holds unchanged.
func (i *Installer) TakesTranscoded(p *ferryv1.Package) bool {
	uses := false
	for _, s := range p.GetSteps() {
		_, k := i.kindOf(s)
		if _, ok := k.(artifactUser); !ok {
			continue
		}
		t, ok := k.(transcodedTaker)
		if !ok || !t.TakesTranscoded(s) {
			return false // the file itself is used (an agent update), or a zip
		}
		uses = true
	}
	return uses
}

// transcodedTaker is a step kind that can use the artifact's zstd form
// for this step (TakesTranscoded).
type transcodedTaker interface {
	TakesTranscoded(s *ferryv1.Step) bool
}

// streamer is a step kind that reads a streamed artifact as it arrives
// and waits for its verification itself before it changes anything; the
// job waits for it before any other step.
type streamer interface {
	ReadsStream()
}

func streams(k stepKind) bool {
	_, ok := k.(streamer)
	return ok
}
