package artifact

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// The zstd form. A tar or tar.gz artifact is transcoded once, as its bytes
// arrive (a push) or are hashed (an import), into a zstd-compressed tar of
// the same tar stream, kept beside the original as a blob of its own
// digest: agents that support zstd download and extract it (about four
// times less CPU than gzip). The transcoder checks every entry with the
// agent's own rules (archive.Transcode): an archive the agent would refuse
// is refused at push, and nothing is kept. The form is committed with the
// original, in the same record, so a record that names a zstd form always
// has it complete; its digest is that of the bytes the transcoder wrote
// from the original the push verified.
//
// Transcoding runs beside the receipt, on the bytes as they pass, so a
// push waits only for what the transcoder has not caught up with when the
// last byte arrived. A zip or a file that is no archive is kept as it is.

// zstdForm is a transcoded artifact in its temp file, not yet committed.
type zstdForm struct {
	tmp    string
	digest string // "sha256:<hex>"
	size   uint64
}

// transcoder is fed an artifact's bytes in order (Write) and transcodes
// them on a goroutine of its own.
type transcoder struct {
	s    *Store
	pw   *io.PipeWriter
	done chan struct{}
	form *zstdForm
	err  error
}

// newTranscoder starts transcoding the artifact label names (its file
// name decides, with its first bytes, whether it is a tarball).
func (s *Store) newTranscoder(ctx context.Context, label, name string) *transcoder {
	pr, pw := io.Pipe()
	t := &transcoder{s: s, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		t.form, t.err = s.transcode(ctx, pr, label, name)
		// The rest of the bytes, whatever came of it: the push goes on.
		_, _ = io.Copy(io.Discard, pr)
	}()
	return t
}

// Write hands bytes to the transcoder; it never fails (the transcoder
// drains what it no longer needs).
func (t *transcoder) Write(p []byte) (int, error) {
	n, err := t.pw.Write(p)
	if err != nil {
		return len(p), nil //nolint:nilerr // finished early (aborted): the bytes are not needed
	}
	return n, nil
}

// finish says all bytes were written and returns the zstd form: nil when
// the artifact is not a tarball (or too large to transcode); an error
// when it was refused.
func (t *transcoder) finish() (*zstdForm, error) {
	_ = t.pw.Close() // a pipe's Close never fails
	<-t.done
	return t.form, t.err
}

// abort ends the transcoder and removes what it wrote.
func (t *transcoder) abort() {
	_ = t.pw.CloseWithError(errors.New("push discarded")) // never fails
	<-t.done
	t.form.discard(t.s)
}

func (z *zstdForm) discard(s *Store) {
	if z != nil {
		s.discard(z.tmp)
	}
}

func (s *Store) transcode(ctx context.Context, r io.Reader, label, name string) (*zstdForm, error) {
	f, err := os.CreateTemp(s.tmpDir, "zstd-*")
	if err != nil {
		return nil, diskErr(label+" (zstd form)", s.tmpDir, 0, err)
	}
	keep := false
	defer func() {
		if !keep {
			_ = f.Close() // discarded
			s.discard(f.Name())
		}
	}()
	h := sha256.New()
	bw := bufio.NewWriterSize(f, 1<<20)
	n := &counter{}
	res, err := archive.Transcode(ctx, r, name, io.MultiWriter(bw, h, n))
	switch {
	case errors.Is(err, archive.ErrNotTranscodable):
		return nil, nil
	case errors.Is(err, archive.ErrTooLargeToTranscode):
		s.log.Info("artifact too large to transcode; agents get the original", "artifact", label, "reason", err)
		return nil, nil
	case errors.Is(err, archive.ErrUnsafe):
		return nil, fmt.Errorf("%w: %s: %w; the agents would refuse it too, so the upload was discarded", ErrUnsafeArchive, label, err)
	case err != nil:
		return nil, fmt.Errorf("%s: transcode to zstd: %w; the upload was discarded", label, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, diskErr(label+" (zstd form)", s.tmpDir, n.n, err)
	}
	if err := f.Sync(); err != nil {
		return nil, diskErr(label+" (zstd form)", s.tmpDir, n.n, err)
	}
	if err := f.Close(); err != nil {
		return nil, diskErr(label+" (zstd form)", s.tmpDir, n.n, err)
	}
	keep = true
	s.log.Debug("artifact transcoded to zstd", "artifact", label, "entries", res.Entries, "tar_bytes", res.Bytes, "zstd_size", n.n)
	return &zstdForm{tmp: f.Name(), digest: sha256digest.Prefix + hex.EncodeToString(h.Sum(nil)), size: n.n}, nil
}

type counter struct{ n uint64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	return len(p), nil
}

// placeZstd moves a verified artifact's zstd form into place as its blob
// and names it in the record; nil z leaves the record without one.
func (s *Store) placeZstd(a *ferryv1.Artifact, z *zstdForm) error {
	if z == nil {
		return nil
	}
	if err := os.Rename(z.tmp, s.blobPath(strings.TrimPrefix(z.digest, sha256digest.Prefix))); err != nil {
		return fmt.Errorf("artifact %s: move the zstd form into place: %w; the upload was discarded", Key(a), err)
	}
	a.ZstdDigest, a.ZstdSize = z.digest, z.size
	return nil
}

// Form is one stored encoding of an artifact, as agents download it.
type Form struct {
	Rec    *ferryv1.Artifact // the artifact's record
	Digest string            // the digest downloaded by: the original's or the zstd form's
	Size   uint64
}

// LookupForm returns the record and encoding with this digest: the
// original, or its zstd form.
func (s *Store) LookupForm(digest string) (Form, error) {
	hexsum, err := sha256digest.Parse(digest)
	if err != nil {
		return Form{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	d := sha256digest.Prefix + hexsum
	rec, err := s.withDigest(d, true)
	if err != nil {
		return Form{}, err
	}
	if rec.Digest == d {
		return Form{Rec: rec, Digest: d, Size: rec.Size}, nil
	}
	return Form{Rec: rec, Digest: d, Size: rec.ZstdSize}, nil
}

// ZstdForm returns the zstd encoding of the artifact with this (original)
// digest, if it has one and is intact: what a job offers an agent that
// supports zstd.
func (s *Store) ZstdForm(digest string) (*ferryv1.ArtifactEncoding, bool) {
	rec, err := s.Lookup(digest)
	if err != nil || rec.GetZstdDigest() == "" || Quarantined(rec) != nil {
		return nil, false
	}
	return &ferryv1.ArtifactEncoding{Codec: archive.CodecZstd, Digest: rec.GetZstdDigest(), Size: rec.GetZstdSize()}, true
}

// OriginalOf returns the original digest of an artifact whose form has
// this digest: itself for an original.
func (s *Store) OriginalOf(digest string) (string, bool) {
	f, err := s.LookupForm(digest)
	if err != nil {
		return "", false
	}
	return f.Rec.GetDigest(), true
}

// openForm opens the blob of a form LookupForm returned.
func (s *Store) openForm(f Form) (*Blob, error) {
	if f.Digest == f.Rec.Digest {
		return s.OpenBlob(f.Rec)
	}
	return s.openBlobFile(Key(f.Rec)+" (zstd form)", strings.TrimPrefix(f.Digest, sha256digest.Prefix), f.Size)
}
