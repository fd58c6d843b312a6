package artifact

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/ctxio"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Copies on several controllers. Controllers sharing one etcd store share
// the artifact records, and each keeps the blobs on its own disk; package
// replica copies them between the controllers. The records stay the only
// source of truth: a blob arrives here (PutBlob) only for a digest a record
// names and only when its bytes hash to it, is never the cause of a record,
// and is removed once no record names it (RemoveUnrecorded), wherever the
// record was removed. A controller asked for bytes it lacks (a download, a
// check) has its Fetcher get them from another controller first.

// Fetcher gets the blob of one form (digest "sha256:<hex>") this
// controller lacks, or whose copy here is damaged, from another controller
// and stores it with PutBlob; package replica is one.
type Fetcher interface {
	FetchBlob(ctx context.Context, digest string) error
}

// SetFetcher has the store ask f for blobs it lacks: before a download of
// one, and when a check finds its copy missing or damaged. Without one
// (a single controller) a missing blob is an error, and a damaged one is
// quarantined.
func (s *Store) SetFetcher(f Fetcher) { s.fetcher.Store(&f) }

func (s *Store) fetcherOf() Fetcher {
	if p := s.fetcher.Load(); p != nil {
		return *p
	}
	return nil
}

// HasBlob reports whether this controller holds the blob of digest (a
// form's, "sha256:<hex>") on its disk.
func (s *Store) HasBlob(digest string) bool {
	hexsum, err := sha256digest.Parse(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(s.blobPath(hexsum))
	return err == nil
}

// formLabel names a form in messages: "name@version" or
// "name@version (zstd form)".
func formLabel(f Form) string {
	if f.Digest == f.Rec.GetDigest() {
		return "artifact " + Key(f.Rec)
	}
	return "artifact " + Key(f.Rec) + " (zstd form)"
}

// PutBlob stores bytes another controller sends of the form with this
// digest. The bytes are not trusted: a digest no record names is refused
// before anything is read, at most the record's size is read, and the
// file takes the blob's place only when it has that size and hashes to
// the digest; on any failure nothing is kept. A copy already here is
// replaced (atomically: downloads reading it go on from the old file),
// which is how a damaged copy is repaired.
func (s *Store) PutBlob(ctx context.Context, digest string, body io.Reader) error {
	form, err := s.LookupForm(digest)
	if err != nil {
		return err
	}
	label := formLabel(form)
	f, err := os.CreateTemp(s.tmpDir, "replica-*")
	if err != nil {
		return diskErr(label, s.tmpDir, 0, err)
	}
	tmp := f.Name()
	kept := false
	defer func() {
		if !kept {
			_ = f.Close() // closed already once written; the file is discarded
			s.discard(tmp)
		}
	}()
	h := sha256.New()
	out := &sink{w: f, max: form.Size}
	dst := io.MultiWriter(out, h)
	if src, ok := body.(ChunkSource); ok {
		err = src.CopyChunks(dst)
	} else {
		bufp := s.chunks.Get().(*[]byte)
		_, err = io.CopyBuffer(dst, ctxio.NewReader(ctx, body), *bufp)
		s.chunks.Put(bufp)
	}
	switch {
	case errors.Is(err, errTooLarge):
		return fmt.Errorf("%w: %s: the copy from another controller has more than the %d bytes its record gives; it was discarded", ErrSizeMismatch, label, form.Size)
	case out.err != nil:
		return diskErr(label, s.tmpDir, out.n, out.err)
	case err != nil:
		return fmt.Errorf("%s: receive the copy from another controller: %w; it was discarded", label, err)
	case out.n != form.Size:
		return fmt.Errorf("%w: %s: the copy from another controller has %d bytes, its record gives %d; it was discarded", ErrSizeMismatch, label, out.n, form.Size)
	}
	if got := sha256digest.Format(h.Sum(nil)); got != form.Digest {
		return fmt.Errorf("%w: %s: the copy from another controller hashes to %s, want %s; it was discarded", ErrChecksumMismatch, label, got, form.Digest)
	}
	if err := f.Sync(); err != nil {
		return diskErr(label, s.tmpDir, out.n, err)
	}
	if err := f.Close(); err != nil {
		return diskErr(label, s.tmpDir, out.n, err)
	}
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	// The record may have been removed while the bytes arrived: then they
	// are not kept (RemoveUnrecorded would remove them anyway).
	if _, err := s.LookupForm(digest); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.blobPath(strings.TrimPrefix(form.Digest, sha256digest.Prefix))); err != nil {
		return fmt.Errorf("%s: move the copy from another controller into place: %w; it was discarded", label, err)
	}
	kept = true
	if err := atomicfile.SyncDir(s.blobDir); err != nil {
		return diskErr(label, s.blobDir, form.Size, err)
	}
	return nil
}

// OpenForm opens the blob of the form with this digest (an original's or a
// zstd form's), as this controller holds it, for another controller
// fetching it: quarantined or not (the caller checks the bytes itself),
// and never fetched from elsewhere in turn.
func (s *Store) OpenForm(digest string) (Form, *Blob, error) {
	form, err := s.LookupForm(digest)
	if err != nil {
		return Form{}, nil, err
	}
	b, err := s.openForm(form)
	return form, b, err
}

// Lacking lists the digests of the forms records name whose blobs this
// controller does not hold, in digest order: what it fetches from the
// others in the background.
func (s *Store) Lacking() ([]string, error) {
	all, err := s.records.Artifacts()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range all {
		for _, d := range []string{a.Digest, a.ZstdDigest} {
			if d == "" || seen[d] {
				continue
			}
			seen[d] = true
			if !s.HasBlob(d) {
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Forms returns the digests of every form rec's artifact is stored in: the
// original's, then the zstd form's when it has one.
func Forms(rec *ferryv1.Artifact) []string {
	if rec.GetZstdDigest() == "" {
		return []string{rec.GetDigest()}
	}
	return []string{rec.GetDigest(), rec.GetZstdDigest()}
}

// RemoveUnrecorded removes the blobs no record names (any more): those of
// artifacts another controller removed, which the shared store no longer
// has. It returns how many it removed.
func (s *Store) RemoveUnrecorded() (int, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.removeUnrecorded()
}

// removeUnrecorded is RemoveUnrecorded; commitMu is held (or the store is
// not serving yet).
func (s *Store) removeUnrecorded() (int, error) {
	all, err := s.records.Artifacts()
	if err != nil {
		return 0, err
	}
	known := map[string]bool{}
	for _, a := range all {
		for _, d := range Forms(a) {
			known[strings.TrimPrefix(d, sha256digest.Prefix)] = true
		}
	}
	blobs, err := os.ReadDir(s.blobDir)
	if err != nil {
		return 0, fmt.Errorf("artifact store: %w", err)
	}
	removed := 0
	for _, e := range blobs {
		if known[e.Name()] {
			continue
		}
		if err := os.Remove(s.blobPath(e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("artifact store: remove unreferenced blob: %w", err)
		}
		removed++
		s.log.Info("removed an artifact blob no record points to (an interrupted push, or a removal here or on another controller)", "artifact", sha256digest.Prefix+e.Name())
	}
	return removed, nil
}

// ensureLocal has the fetcher get the form's blob when this controller
// lacks it, before it is opened for a download.
func (s *Store) ensureLocal(ctx context.Context, form Form) error {
	f := s.fetcherOf()
	if f == nil || s.HasBlob(form.Digest) {
		return nil
	}
	if err := f.FetchBlob(ctx, form.Digest); err != nil {
		return fmt.Errorf("%w: %s: this controller does not hold its bytes, and no other controller could send them: %w; start the controller that received the push, or push the file again", ErrNotFound, formLabel(form), err)
	}
	return nil
}

// repair has the fetcher replace the blobs of the artifact with this
// (original) digest, which a check found missing or damaged here.
func (s *Store) repair(ctx context.Context, f Fetcher, digest string) error {
	recs, err := s.matching(func(a *ferryv1.Artifact) bool { return a.Digest == digest })
	if err != nil || len(recs) == 0 {
		return errors.Join(err, errors.New("no record"))
	}
	for _, d := range Forms(recs[0]) {
		if err := f.FetchBlob(ctx, d); err != nil {
			return err
		}
	}
	s.log.Info("artifact blob missing or damaged here: replaced by a verified copy from another controller", "artifact", Key(recs[0]), "digest", digest)
	return nil
}
