package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/ctxio"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Staging is the directory the controller's own downloads (imports) keep
// their partial files in, so an interrupted transfer resumes, also after
// a restart: Open leaves it alone. It lies beside the blobs, on their file
// system, so PutStaged moves a finished file into place without a copy.
func (s *Store) Staging() string { return s.stageDir }

// PutIfKnown settles req without any bytes when the store already answers
// it (see Put): done is false when the bytes are needed.
func (s *Store) PutIfKnown(req PutRequest) (a *ferryv1.Artifact, pushed Pushed, done bool, err error) {
	if err := req.normalize(); err != nil {
		return nil, Unchanged, true, err
	}
	return s.putKnown(req)
}

// PutStaged stores the finished file at path (in Staging) as Put stores
// an upload, with the same checks and records: it hashes the file, checks
// the declared size and checksum, and moves it into place by digest. The
// file is consumed whatever the outcome: it becomes the blob, or is
// removed (a mismatch, bytes already stored, a failure).
func (s *Store) PutStaged(ctx context.Context, req PutRequest, path string) (*ferryv1.Artifact, Pushed, error) {
	kept := false
	defer func() {
		if !kept {
			s.discard(path)
		}
	}()
	if err := req.normalize(); err != nil {
		return nil, Unchanged, err
	}
	if a, pushed, done, err := s.putKnown(req); done {
		return a, pushed, err
	}
	label := "artifact " + key(req.Name, req.Version)
	f, err := os.Open(path)
	if err != nil {
		return nil, Unchanged, fmt.Errorf("%s: open the downloaded file: %w", label, err)
	}
	h := sha256.New()
	tc := s.newTranscoder(ctx, label, req.Name)
	finished := false
	defer func() {
		if !finished {
			tc.abort()
		}
	}()
	bufp := s.chunks.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(h, tc), ctxio.NewReader(ctx, f), *bufp)
	s.chunks.Put(bufp)
	_ = f.Close() // read-only
	if err != nil {
		return nil, Unchanged, fmt.Errorf("%s: read the downloaded file: %w; it was discarded", label, err)
	}
	size := uint64(n) //nolint:gosec // a byte count is never negative
	if req.Size > 0 && size != req.Size {
		return nil, Unchanged, fmt.Errorf("%w: %s: %d bytes arrived, %d were expected; the download was discarded", ErrSizeMismatch, label, size, req.Size)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if req.SHA256 != "" && sum != req.SHA256 {
		return nil, Unchanged, fmt.Errorf("%w: %s: got %s, want %s; the download was discarded", ErrChecksumMismatch, label, sha256digest.Prefix+sum, sha256digest.Prefix+req.SHA256)
	}
	finished = true
	z, err := tc.finish()
	if err != nil {
		return nil, Unchanged, err
	}
	a := &ferryv1.Artifact{
		Digest: sha256digest.Prefix + sum, Name: req.Name, Version: req.Version, Os: req.OS, Arch: req.Arch,
		Size: size, PushedBy: req.PushedBy, PushedAt: timestamppb.New(s.now()),
	}
	kept = true // commit owns the files from here
	return s.commit(a, path, z, req.audit)
}
