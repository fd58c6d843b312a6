// Package artifact is the controller's artifact store: content-addressed
// blobs under <data-dir>/artifacts/sha256/<hex>, their metadata (name,
// version, platform, size, who pushed them and when) in the embedded store,
// and the download path agents stream from (with a cap on concurrent
// downloads). Package server serves it over gRPC; ferryctl's side of a
// push is package pushclient.
//
// A blob becomes visible only through its metadata record, and a record is
// written only after its blob was hashed, fsynced and renamed into place,
// so a crash at any point never exposes a half-written artifact. Temp files
// and blobs without metadata left by a crash are removed at startup.
//
// Stored blobs are hashed again (verify.go): by an admin, when a node
// reports a download that did not match, and in the background after
// start. A blob that no longer matches its digest is quarantined, refused
// to agents with ErrDamaged, until a push brings the same bytes again.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/ctxio"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// ChunkSize is the size of the messages a push and a download carry.
const ChunkSize = 1 << 20

// Errors callers tell apart with errors.Is; the wrapped messages name the
// artifact and the fix.
var (
	ErrNotFound         = errors.New("artifact not found")
	ErrInvalid          = errors.New("invalid artifact request")
	ErrChecksumMismatch = errors.New("sha256 mismatch")
	ErrSizeMismatch     = errors.New("size mismatch")
	ErrConflict         = errors.New("artifact version exists with other content")
	ErrAmbiguous        = errors.New("ambiguous artifact reference")
	ErrReferenced       = errors.New("artifact is referenced by packages")
	ErrDiskFull         = errors.New("controller disk full")
	// ErrDamaged: the stored bytes no longer match the digest; the
	// artifact is quarantined until the same bytes are pushed again.
	ErrDamaged = errors.New("damaged on the controller")
	// ErrUnsafeArchive: a tarball the agents' extractor would refuse
	// (damaged, or with entries that escape or are device files), found
	// while transcoding it; the push or import keeps nothing.
	ErrUnsafeArchive = errors.New("unsafe or damaged archive")
)

// Records keeps artifact metadata, keyed "name@version" (several records
// may share one blob), and answers which packages use a digest: the
// controller's store.Store.
type Records interface {
	// Artifact returns one record; store.ErrNotFound when absent.
	Artifact(key string) (*ferryv1.Artifact, error)
	// Artifacts returns every record.
	Artifacts() ([]*ferryv1.Artifact, error)
	// PutArtifact writes a record and the push's audit entry in one
	// transaction: both or neither.
	PutArtifact(a *ferryv1.Artifact, ev *ferryv1.AuditEvent) error
	// DeleteArtifact removes a record and writes the removal's audit
	// entry, in one transaction, unless packages use its digest; then it
	// writes nothing and returns them.
	DeleteArtifact(key string, ev *ferryv1.AuditEvent) (usedBy []string, err error)
	// PackagesUsing lists the packages ("name@version") using digest.
	PackagesUsing(digest string) ([]string, error)
	// UpdateArtifacts applies update to every record with digest and
	// writes the audit entry ev (nil: none) in one transaction, and
	// returns the records as written.
	UpdateArtifacts(digest string, update func(*ferryv1.Artifact), ev *ferryv1.AuditEvent) ([]*ferryv1.Artifact, error)
}

// Config configures a Store.
type Config struct {
	Dir     string  // <data-dir>/artifacts
	Records Records // the controller's store
	Logger  *slog.Logger
	Now     func() time.Time
	// RecheckEvery is how often at most a blob is hashed again because
	// nodes report downloads of it that did not match (default
	// DefaultRecheckEvery): a node cannot make the controller read a blob
	// more often, whatever it sends.
	RecheckEvery time.Duration
	// VerifyRate caps the bytes per second the check after start reads
	// (default DefaultVerifyRate; negative: no cap).
	VerifyRate int64

	// Shared says the records are shared with other controllers (an etcd
	// store), which keep copies of the blobs: a blob missing here is
	// fetched from them (SetFetcher) rather than an error.
	Shared bool

	// wrapTemp wraps the writer of a push's temp file; tests use it to
	// simulate a full disk.
	wrapTemp func(io.Writer) io.Writer
}

// Store keeps artifacts: blobs on disk, metadata in the controller's store.
type Store struct {
	blobDir  string
	tmpDir   string
	stageDir string // imports' partial downloads (staged.go)
	records  Records
	log      *slog.Logger
	now      func() time.Time
	wrapTemp func(io.Writer) io.Writer
	chunks   *sync.Pool // ChunkSize buffers, shared by pushes and downloads
	checks   *checks    // re-hashing stored blobs (verify.go)
	shared   bool       // Config.Shared
	fetcher  atomic.Pointer[Fetcher]
	digests  digestIndex // record keys by digest, for Lookup and LookupForm
	pieces   *pieceCache // piece digests for peer exchange (pieces.go)

	// commitMu serialises what links blobs and metadata: renaming a blob
	// into place with writing its record, and deleting a record with
	// unlinking its blob. Uploads themselves run concurrently.
	commitMu sync.Mutex
}

// Open prepares the artifact directory, removes what a crash left behind
// (temp files, blobs no record points to) and returns the store.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" || cfg.Records == nil {
		return nil, errors.New("artifact store: Dir and Records are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{
		blobDir:  filepath.Join(cfg.Dir, "sha256"),
		tmpDir:   filepath.Join(cfg.Dir, "tmp"),
		stageDir: filepath.Join(cfg.Dir, "staging"),
		records:  cfg.Records,
		log:      cfg.Logger,
		now:      cfg.Now,
		wrapTemp: cfg.wrapTemp,
		chunks:   newChunkPool(),
		checks:   newChecks(cfg.RecheckEvery, cfg.VerifyRate),
		shared:   cfg.Shared,
		pieces:   newPieceCache(),
	}
	for _, d := range []string{s.blobDir, s.tmpDir, s.stageDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("artifact store: %w", err)
		}
	}
	if err := s.cleanup(); err != nil {
		return nil, err
	}
	return s, nil
}

// cleanup removes temp files of interrupted pushes and blobs without a
// metadata record (a crash between rename and commit), and reports records
// whose blob is missing.
func (s *Store) cleanup() error {
	tmps, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("artifact store: %w", err)
	}
	for _, e := range tmps {
		p := filepath.Join(s.tmpDir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("artifact store: remove interrupted upload: %w", err)
		}
		s.log.Info("removed an interrupted artifact upload", "file", p)
	}
	if _, err := s.removeUnrecorded(); err != nil {
		return err
	}
	all, err := s.List("")
	if err != nil {
		return err
	}
	blobs, err := os.ReadDir(s.blobDir)
	if err != nil {
		return fmt.Errorf("artifact store: %w", err)
	}
	present := map[string]bool{}
	for _, e := range blobs {
		present[e.Name()] = true
	}
	for _, a := range all {
		switch {
		case present[strings.TrimPrefix(a.Digest, sha256digest.Prefix)]:
		case s.shared:
			s.log.Info("artifact blob not held here yet; it is fetched from another controller", "artifact", key(a.Name, a.Version), "digest", a.Digest)
		default:
			s.log.Error("artifact blob is missing; agents cannot download it: push the file again or remove the record", "artifact", key(a.Name, a.Version), "digest", a.Digest)
		}
	}
	return nil
}

func key(name, version string) string { return store.VersionKey(name, version) }

// Key is an artifact's "name@version".
func Key(a *ferryv1.Artifact) string { return key(a.GetName(), a.GetVersion()) }

// PutRequest describes an upload.
type PutRequest struct {
	Name, Version, OS, Arch string
	Size                    uint64 // expected size; 0 when unknown
	SHA256                  string // expected digest (hex, optionally "sha256:"); "" accepts what arrives
	PushedBy                string
	// Audit, when set, returns the push's audit entry for the record
	// about to be written and what the push does (Created, Restored); it
	// is written in the same transaction, so a push whose entry cannot be
	// written keeps nothing. A push that finds its bytes already stored
	// under its name@version writes nothing, and Audit is not called.
	Audit func(*ferryv1.Artifact, Pushed) *ferryv1.AuditEvent
}

// audit is the entry for the record a; nil without req.Audit.
func (r *PutRequest) audit(a *ferryv1.Artifact, p Pushed) *ferryv1.AuditEvent {
	if r.Audit == nil {
		return nil
	}
	return r.Audit(a, p)
}

func (r *PutRequest) normalize() error {
	if err := validName("name", r.Name); err != nil {
		return err
	}
	if err := validName("version", r.Version); err != nil {
		return err
	}
	for _, f := range []struct{ what, v string }{{"os", r.OS}, {"arch", r.Arch}} {
		if f.v != "" && validName(f.what, f.v) != nil {
			return fmt.Errorf("%w: %s %q may not contain spaces, '/' or '@'", ErrInvalid, f.what, f.v)
		}
	}
	if r.SHA256 != "" {
		h, err := sha256digest.ParseHex(r.SHA256)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		r.SHA256 = h
	}
	return nil
}

func validName(what, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: artifact %s is empty; give one (ferryctl artifact push --%s)", ErrInvalid, what, what)
	case len(v) > 200:
		return fmt.Errorf("%w: artifact %s is longer than 200 characters", ErrInvalid, what)
	case strings.ContainsAny(v, "@/\\") || strings.IndexFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		return fmt.Errorf("%w: artifact %s %q may not contain spaces, control characters, '/', '\\' or '@'", ErrInvalid, what, v)
	}
	return nil
}

// sink writes a push's bytes to its temp file and remembers write errors,
// so they can be told apart from receive errors.
type sink struct {
	w   io.Writer
	n   uint64
	max uint64 // 0: no limit
	err error
}

var errTooLarge = errors.New("more bytes than declared")

func (s *sink) Write(p []byte) (int, error) {
	if s.max > 0 && s.n+uint64(len(p)) > s.max {
		return 0, errTooLarge
	}
	n, err := s.w.Write(p)
	s.n += uint64(n) //nolint:gosec // Write never returns a negative count
	if err != nil {
		s.err = err
	}
	return n, err
}

// Pushed says what a push changed.
type Pushed int

const (
	// Unchanged: name@version already held these bytes, intact.
	Unchanged Pushed = iota
	// Created: a new record, and the blob unless another record shares it.
	Created
	// Restored: the bytes replaced a damaged copy of them, and every
	// record sharing them is served again.
	Restored
)

// Put stores an upload: it writes body to a temp file while hashing it,
// fsyncs, checks the declared size and checksum, renames the file into
// place by digest and records the metadata. On any failure nothing is
// kept. Bytes whose stored copy is damaged replace it.
func (s *Store) Put(ctx context.Context, req PutRequest, body io.Reader) (a *ferryv1.Artifact, pushed Pushed, err error) {
	if err := req.normalize(); err != nil {
		return nil, Unchanged, err
	}
	label := "artifact " + key(req.Name, req.Version)
	if a, pushed, done, err := s.putKnown(req); done {
		return a, pushed, err
	}

	f, err := os.CreateTemp(s.tmpDir, "push-*")
	if err != nil {
		return nil, Unchanged, diskErr(label, s.tmpDir, 0, err)
	}
	tmp := f.Name()
	kept := false
	defer func() {
		if !kept {
			_ = f.Close() // closed already once written; the file is discarded
			s.discard(tmp)
		}
	}()
	var w io.Writer = f
	if s.wrapTemp != nil {
		w = s.wrapTemp(w)
	}
	h := sha256.New()
	out := &sink{w: w, max: req.Size}
	tc := s.newTranscoder(ctx, label, req.Name)
	finished := false
	defer func() {
		if !finished {
			tc.abort()
		}
	}()
	dst := io.MultiWriter(out, h, tc)
	if src, ok := body.(ChunkSource); ok {
		err = src.CopyChunks(dst)
	} else {
		bufp := s.chunks.Get().(*[]byte)
		_, err = io.CopyBuffer(dst, ctxio.NewReader(ctx, body), *bufp)
		s.chunks.Put(bufp)
	}
	switch {
	case errors.Is(err, errTooLarge):
		return nil, Unchanged, fmt.Errorf("%w: %s: more than the declared %d bytes arrived; the upload was discarded", ErrSizeMismatch, label, req.Size)
	case out.err != nil:
		return nil, Unchanged, diskErr(label, s.tmpDir, out.n, out.err)
	case err != nil:
		return nil, Unchanged, fmt.Errorf("%s: receive: %w; the upload was discarded", label, err)
	}
	if req.Size > 0 && out.n != req.Size {
		return nil, Unchanged, fmt.Errorf("%w: %s: %d bytes arrived, %d were declared; the upload was discarded", ErrSizeMismatch, label, out.n, req.Size)
	}
	if err := f.Sync(); err != nil {
		return nil, Unchanged, diskErr(label, s.tmpDir, out.n, err)
	}
	if err := f.Close(); err != nil {
		return nil, Unchanged, diskErr(label, s.tmpDir, out.n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if req.SHA256 != "" && sum != req.SHA256 {
		return nil, Unchanged, fmt.Errorf("%w: %s: got %s, want %s; the upload was discarded", ErrChecksumMismatch, label, sha256digest.Prefix+sum, sha256digest.Prefix+req.SHA256)
	}
	finished = true
	z, err := tc.finish()
	if err != nil {
		return nil, Unchanged, err
	}
	a = &ferryv1.Artifact{
		Digest: sha256digest.Prefix + sum, Name: req.Name, Version: req.Version, Os: req.OS, Arch: req.Arch,
		Size: out.n, PushedBy: req.PushedBy, PushedAt: timestamppb.New(s.now()),
	}
	kept = true // commit owns the temp files from here
	return s.commit(a, tmp, z, req.audit)
}

// putKnown settles a push without reading its body when the declared
// checksum already answers it: the same name@version with the same digest
// is a no-op, with another digest a conflict; a known blob under another
// name only needs a new record. A damaged blob needs the body.
func (s *Store) putKnown(req PutRequest) (a *ferryv1.Artifact, pushed Pushed, done bool, err error) {
	if req.SHA256 == "" {
		return nil, Unchanged, false, nil
	}
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	digest := sha256digest.Prefix + req.SHA256
	all, err := s.records.Artifacts()
	if err != nil {
		return nil, Unchanged, true, err
	}
	var blobRec *ferryv1.Artifact
	for _, r := range all {
		if Key(r) == key(req.Name, req.Version) {
			if r.Digest != digest {
				return r, Unchanged, true, conflict(r, digest)
			}
			if damaged(r) {
				return nil, Unchanged, false, nil // the upload replaces the damaged copy
			}
			return r, Unchanged, true, nil
		}
		if r.Digest == digest {
			blobRec = r
		}
	}
	if blobRec == nil || damaged(blobRec) {
		return nil, Unchanged, false, nil
	}
	if req.Size > 0 && req.Size != blobRec.Size {
		return nil, Unchanged, true, fmt.Errorf("%w: artifact %s: declared %d bytes, but %s holds %d; the upload was discarded", ErrSizeMismatch, key(req.Name, req.Version), req.Size, digest, blobRec.Size)
	}
	if _, err := os.Stat(s.blobPath(req.SHA256)); err != nil {
		return nil, Unchanged, false, nil // upload it again
	}
	a = &ferryv1.Artifact{
		Digest: digest, Name: req.Name, Version: req.Version, Os: req.OS, Arch: req.Arch,
		Size: blobRec.Size, PushedBy: req.PushedBy, PushedAt: timestamppb.New(s.now()),
		State: blobRec.State, CheckedAt: blobRec.CheckedAt, // the blob's, which this record shares
		ZstdDigest: blobRec.ZstdDigest, ZstdSize: blobRec.ZstdSize,
	}
	if err := s.records.PutArtifact(a, req.audit(a, Created)); err != nil {
		return nil, Unchanged, true, fmt.Errorf("artifact %s: record metadata: %w", Key(a), err)
	}
	return a, Created, true, nil
}

func conflict(old *ferryv1.Artifact, digest string) error {
	return fmt.Errorf("%w: artifact %s already exists with different bytes (%s, pushed by %s at %s), these are %s; artifact versions are immutable: push under a new --version, or remove the old one with `ferryctl artifact rm %s`",
		ErrConflict, Key(old), old.Digest, old.PushedBy, old.PushedAt.AsTime().UTC().Format(time.RFC3339), digest, Key(old))
}

// commit links a verified temp file to its record, written with the audit
// entry audit returns for it. The file takes the blob's place when there
// is none (or no record vouches for the one there), and when the stored
// copy is damaged: then every record sharing it is served again. A new
// blob is removed again when the record and entry cannot be written.
// z, when not nil, is the artifact's zstd form (transcode.go): it is
// placed with a new blob and named in the record, and discarded when the
// blob is already there.
func (s *Store) commit(a *ferryv1.Artifact, tmp string, z *zstdForm, audit func(*ferryv1.Artifact, Pushed) *ferryv1.AuditEvent) (*ferryv1.Artifact, Pushed, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	hexsum := strings.TrimPrefix(a.Digest, sha256digest.Prefix)
	removeTmp, removeZstd := true, true
	defer func() {
		if removeTmp {
			s.discard(tmp)
		}
		if removeZstd {
			z.discard(s)
		}
	}()
	old, err := s.records.Artifact(Key(a))
	switch {
	case errors.Is(err, store.ErrNotFound):
		old = nil
	case err != nil:
		return nil, Unchanged, err
	case old.Digest != a.Digest:
		return nil, Unchanged, conflict(old, a.Digest)
	case !damaged(old):
		return old, Unchanged, nil
	}
	shared, err := s.matching(func(o *ferryv1.Artifact) bool { return o.Digest == a.Digest })
	if err != nil {
		return nil, Unchanged, err
	}
	restore := len(shared) > 0 && damaged(shared[0])
	blob := s.blobPath(hexsum)
	_, statErr := os.Stat(blob)
	newBlob := errors.Is(statErr, os.ErrNotExist)
	if statErr != nil || len(shared) == 0 || restore {
		// A rename over a damaged copy is atomic: a download streaming
		// it keeps reading the old file.
		if err := os.Rename(tmp, blob); err != nil {
			return nil, Unchanged, fmt.Errorf("artifact %s: move into place: %w; the upload was discarded", Key(a), err)
		}
		removeTmp = false
		if err := s.placeZstd(a, z); err != nil {
			if newBlob {
				s.discard(blob)
			}
			return nil, Unchanged, err
		}
		removeZstd = false
		if err := atomicfile.SyncDir(s.blobDir); err != nil {
			if newBlob {
				s.discardBlobs(a)
			}
			return nil, Unchanged, diskErr("artifact "+Key(a), s.blobDir, a.Size, err)
		}
		a.State, a.CheckedAt = ferryv1.ArtifactState_ARTIFACT_STATE_OK, timestamppb.New(s.now())
	} else {
		a.State, a.CheckedAt = shared[0].State, shared[0].CheckedAt // the blob's, which this record shares
		a.ZstdDigest, a.ZstdSize = shared[0].ZstdDigest, shared[0].ZstdSize
	}
	if restore {
		// The push's entry goes with the restore when it names a damaged
		// record, else with the new record below.
		var ev *ferryv1.AuditEvent
		if old != nil {
			ev = audit(old, Restored)
		}
		restored, err := s.records.UpdateArtifacts(a.Digest, func(r *ferryv1.Artifact) {
			r.State, r.CheckedAt, r.StoredDigest = a.State, a.CheckedAt, ""
			r.ZstdDigest, r.ZstdSize = a.ZstdDigest, a.ZstdSize
		}, ev)
		if err != nil {
			return nil, Unchanged, fmt.Errorf("artifact %s: the pushed bytes replaced the damaged copy, but recording that failed: %w; push again", Key(a), err)
		}
		s.log.Info("damaged artifact restored by a push; serving it again", "artifact", Key(a), "digest", a.Digest, "records", len(restored))
		if old != nil {
			return byKey(restored, Key(a), old), Restored, nil
		}
	}
	pushed := Created
	if restore {
		pushed = Restored
	}
	if err := s.records.PutArtifact(a, audit(a, pushed)); err != nil {
		if newBlob {
			s.discardBlobs(a)
		}
		return nil, Unchanged, fmt.Errorf("artifact %s: record metadata: %w; the upload was discarded", Key(a), err)
	}
	return a, pushed, nil
}

// byKey returns the record of recs named key, or def.
func byKey(recs []*ferryv1.Artifact, key string, def *ferryv1.Artifact) *ferryv1.Artifact {
	for _, r := range recs {
		if Key(r) == key {
			return r
		}
	}
	return def
}

func diskErr(label, dir string, written uint64, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %s: no space left in %s after %d bytes; free space there (remove unused artifacts with `ferryctl artifact rm`) and push again; the upload was discarded: %w", ErrDiskFull, label, dir, written, err)
	}
	return fmt.Errorf("%s: write to %s: %w; the upload was discarded", label, dir, err)
}

func (s *Store) blobPath(hexsum string) string { return filepath.Join(s.blobDir, hexsum) }

// matching returns the records match accepts, in key order.
func (s *Store) matching(match func(*ferryv1.Artifact) bool) ([]*ferryv1.Artifact, error) {
	all, err := s.records.Artifacts()
	if err != nil {
		return nil, err
	}
	var out []*ferryv1.Artifact
	for _, a := range all {
		if match(a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// List returns the artifacts, all or those named name, newest first.
func (s *Store) List(name string) ([]*ferryv1.Artifact, error) {
	out, err := s.matching(func(a *ferryv1.Artifact) bool { return name == "" || a.Name == name })
	sortNewestFirst(out)
	return out, err
}

func sortNewestFirst(as []*ferryv1.Artifact) {
	sort.SliceStable(as, func(i, j int) bool {
		ti, tj := as[i].PushedAt.AsTime(), as[j].PushedAt.AsTime()
		if !ti.Equal(tj) {
			return ti.After(tj)
		}
		return Key(as[i]) < Key(as[j])
	})
}

// ResolveArtifact finds the artifact a reference names: "name@version",
// "sha256:<hex prefix>" (which must match exactly one record), or a bare
// name (the version pushed last). It is pkgspec.ArtifactResolver.
func (s *Store) ResolveArtifact(ref string) (*ferryv1.Artifact, error) {
	return s.resolve(ref, true)
}

// Resolve is ResolveArtifact, except that a bare name must have exactly
// one version: what the admin commands use before changing anything.
func (s *Store) Resolve(ref string) (*ferryv1.Artifact, error) {
	return s.resolve(ref, false)
}

const notFoundHint = "list artifacts with `ferryctl artifact list`"

func (s *Store) resolve(ref string, latest bool) (*ferryv1.Artifact, error) {
	ref = strings.TrimSpace(ref)
	switch {
	case ref == "":
		return nil, fmt.Errorf("%w: empty artifact reference; use NAME@VERSION or sha256:PREFIX", ErrInvalid)
	case strings.HasPrefix(ref, sha256digest.Prefix):
		prefix := strings.ToLower(strings.TrimPrefix(ref, sha256digest.Prefix))
		if prefix == "" || strings.Trim(prefix, "0123456789abcdef") != "" || len(prefix) > 64 {
			return nil, fmt.Errorf("%w: %q: after %q give hex digits of the digest", ErrInvalid, ref, sha256digest.Prefix)
		}
		// Either form's digest names the artifact: an agent's failed
		// download names the zstd form's, and its message says to verify it.
		matches, err := s.matching(func(a *ferryv1.Artifact) bool {
			return strings.HasPrefix(strings.TrimPrefix(a.Digest, sha256digest.Prefix), prefix) ||
				a.ZstdDigest != "" && strings.HasPrefix(strings.TrimPrefix(a.ZstdDigest, sha256digest.Prefix), prefix)
		})
		if err != nil {
			return nil, err
		}
		return one(ref, matches)
	case strings.Contains(ref, "@"):
		a, err := s.records.Artifact(ref)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s; %s", ErrNotFound, ref, notFoundHint)
		}
		return a, err
	}
	matches, err := s.matching(func(a *ferryv1.Artifact) bool { return a.Name == ref })
	if err != nil {
		return nil, err
	}
	sortNewestFirst(matches)
	if latest && len(matches) > 0 {
		return matches[0], nil
	}
	return one(ref, matches)
}

func one(ref string, matches []*ferryv1.Artifact) (*ferryv1.Artifact, error) {
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("%w: %s; %s", ErrNotFound, ref, notFoundHint)
	case 1:
		return matches[0], nil
	}
	sortNewestFirst(matches)
	names := make([]string, len(matches))
	for i, a := range matches {
		names[i] = Key(a) + " (" + sha256digest.Short(a.Digest) + ")"
	}
	return nil, fmt.Errorf("%w: %s matches %d artifacts: %s; name one as NAME@VERSION or give more digits", ErrAmbiguous, ref, len(matches), strings.Join(names, ", "))
}

// ReferencedBy lists the packages ("name@version") whose artifact is digest.
func (s *Store) ReferencedBy(digest string) ([]string, error) {
	return s.records.PackagesUsing(digest)
}

// Delete removes the record ref names, refusing while a package references
// its digest, and unlinks the blob when no other record shares it.
// Downloads already streaming it finish from their open file. audit, when
// set, returns the removal's audit entry for the record; it is written in
// the transaction that removes the record, and the blob is unlinked only
// after that committed.
func (s *Store) Delete(ref string, audit func(*ferryv1.Artifact) *ferryv1.AuditEvent) (*ferryv1.Artifact, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	// commitMu keeps every other artifact write out until the end, so the
	// record resolved here is the one removed, and the blob's other users
	// are counted after.
	a, err := s.resolve(ref, false)
	if err != nil {
		return nil, err
	}
	var ev *ferryv1.AuditEvent
	if audit != nil {
		ev = audit(a)
	}
	refs, err := s.records.DeleteArtifact(Key(a), ev)
	if err != nil {
		return nil, err
	}
	if len(refs) > 0 {
		return nil, fmt.Errorf("%w: artifact %s (%s) is used by package %s; remove or replace those packages first", ErrReferenced, Key(a), sha256digest.Short(a.Digest), strings.Join(refs, ", "))
	}
	shared, err := s.matching(func(o *ferryv1.Artifact) bool { return o.Digest == a.Digest })
	if err != nil {
		return nil, err
	}
	if len(shared) == 0 {
		for _, d := range []string{a.Digest, a.ZstdDigest} {
			if d == "" {
				continue
			}
			if err := os.Remove(s.blobPath(strings.TrimPrefix(d, sha256digest.Prefix))); err != nil && !errors.Is(err, os.ErrNotExist) {
				// The record is gone; the blob is collected at the next start.
				s.log.Warn("remove artifact blob", "artifact", Key(a), "digest", d, "err", err)
			}
		}
	}
	return a, nil
}

// Blob is an artifact's bytes opened for reading.
type Blob struct {
	*os.File
	Size uint64
}

// Lookup returns a record with this digest ("sha256:<hex>").
func (s *Store) Lookup(digest string) (*ferryv1.Artifact, error) {
	hexsum, err := sha256digest.Parse(digest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return s.withDigest(sha256digest.Prefix+hexsum, false)
}

// discard removes a file a failed push leaves behind. One it cannot
// remove is only logged: Open removes temp files and blobs without a
// record on the next start.
func (s *Store) discard(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove a discarded upload; the next start removes it", "file", path, "err", err)
	}
}

// OpenBlob opens the blob of a record Lookup returned.
func (s *Store) OpenBlob(rec *ferryv1.Artifact) (*Blob, error) {
	return s.openBlobFile(Key(rec), strings.TrimPrefix(rec.Digest, sha256digest.Prefix), rec.Size)
}

// openBlobFile opens the blob hexsum, which its record says has size
// bytes; label names it in errors.
func (s *Store) openBlobFile(label, hexsum string, size uint64) (*Blob, error) {
	f, err := os.Open(s.blobPath(hexsum))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: artifact %s: its blob was removed", ErrNotFound, label)
		}
		return nil, fmt.Errorf("artifact %s: %w", label, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close() // read-only
		return nil, fmt.Errorf("artifact %s: %w", label, err)
	}
	if uint64(fi.Size()) != size { //nolint:gosec // a file's size is never negative
		_ = f.Close() // read-only
		return nil, fmt.Errorf("artifact %s: blob %s has %d bytes, its record says %d; the store is damaged: push the file again", label, f.Name(), fi.Size(), size)
	}
	return &Blob{File: f, Size: size}, nil
}

// discardBlobs removes a new artifact's blobs (the original and its zstd
// form) when its record could not be written.
func (s *Store) discardBlobs(a *ferryv1.Artifact) {
	s.discard(s.blobPath(strings.TrimPrefix(a.Digest, sha256digest.Prefix)))
	if a.ZstdDigest != "" {
		s.discard(s.blobPath(strings.TrimPrefix(a.ZstdDigest, sha256digest.Prefix)))
	}
}

// ChunkSource is a body that hands over its own chunks (a push stream),
// which saves copying them through a buffer.
type ChunkSource interface {
	CopyChunks(w io.Writer) error
}

func newChunkPool() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}
}
