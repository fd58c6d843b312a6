// Package importer is the controller fetching an artifact itself: from an
// HTTP(S) repository inside the data center (system roots or an admin's CA
// bundle) or from a file under one of the configured import directories
// (an NFS share mounted on the controller). What it fetches goes into the
// artifact store through the same checks and records as a push: the
// expected digest is required and nothing is recorded unless the bytes
// match it.
//
// An HTTP transfer that breaks resumes from what arrived, with a Range
// request that names the file's version (If-Range with its ETag or
// Last-Modified), in the same import and, as the partial file stays in the
// store's staging directory, in an import of the same URL and digest run
// again later. A file that does not match its digest leaves nothing: no
// artifact, no blob, no partial.
package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Defaults of Config's zero fields.
const (
	// DefaultMaxSize bounds what one import may fetch.
	DefaultMaxSize = 64 << 30
	// DefaultStallTimeout ends a transfer attempt that received nothing
	// for this long; the next attempt resumes.
	DefaultStallTimeout = time.Minute
	// DefaultAttempts is how many attempts in a row may fail without a
	// byte of progress before the import gives up (its partial stays).
	DefaultAttempts = 5
	// DefaultPartialTTL is how long a partial download nobody resumed is
	// kept.
	DefaultPartialTTL = 7 * 24 * time.Hour
	// maxChecksumFile bounds a checksum file (SHA256SUMS of a whole release
	// is a few KiB).
	maxChecksumFile = 1 << 20
	// maxCABundle bounds the PEM an admin sends.
	maxCABundle = 1 << 20
)

// Errors callers tell apart with errors.Is; the messages name the source
// and the fix.
var (
	// ErrRefused: the source may not be read (a path outside the import
	// directories, or none configured).
	ErrRefused = errors.New("import refused")
	// ErrFetch: the source could not be fetched (HTTP status, TLS,
	// network, a missing file).
	ErrFetch = errors.New("fetch failed")
	// ErrTooLarge: the source is larger than the import size limit.
	ErrTooLarge = errors.New("artifact too large")
	// ErrBusy: the same source is being imported already.
	ErrBusy = errors.New("import already running")
)

// Store is what an import needs of the artifact store (artifact.Store).
type Store interface {
	Staging() string
	PutIfKnown(req artifact.PutRequest) (*ferryv1.Artifact, artifact.Pushed, bool, error)
	PutStaged(ctx context.Context, req artifact.PutRequest, path string) (*ferryv1.Artifact, artifact.Pushed, error)
	Put(ctx context.Context, req artifact.PutRequest, body io.Reader) (*ferryv1.Artifact, artifact.Pushed, error)
}

// Config configures an Importer.
type Config struct {
	Store Store
	// Dirs are the directories path imports may read below (--import-dir);
	// none: path imports are refused.
	Dirs         []string
	MaxSize      uint64        // default DefaultMaxSize
	StallTimeout time.Duration // default DefaultStallTimeout
	Attempts     int           // default DefaultAttempts
	PartialTTL   time.Duration // default DefaultPartialTTL
	// RetryWait is the pause before attempt n (1, 2, ...) of a transfer;
	// default n seconds.
	RetryWait func(n int) time.Duration
	Logger    *slog.Logger
	Now       func() time.Time
}

// Importer fetches artifacts into the store.
type Importer struct {
	cfg     Config
	roots   []root
	log     *slog.Logger
	mu      sync.Mutex
	running map[string]bool // partial keys being fetched
}

// root is an import directory: as configured and as it resolves.
type root struct{ dir, resolved string }

// New checks the import directories and removes partial downloads older
// than PartialTTL.
func New(cfg Config) (*Importer, error) {
	if cfg.Store == nil {
		return nil, errors.New("importer: Store is required")
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.PartialTTL <= 0 {
		cfg.PartialTTL = DefaultPartialTTL
	}
	if cfg.RetryWait == nil {
		cfg.RetryWait = func(n int) time.Duration { return time.Duration(n) * time.Second }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	im := &Importer{cfg: cfg, log: cfg.Logger, running: map[string]bool{}}
	for _, d := range cfg.Dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("--import-dir %q: give an absolute path", d)
		}
		resolved, err := filepath.EvalSymlinks(d)
		if err != nil {
			return nil, fmt.Errorf("--import-dir %s: %w", d, err)
		}
		fi, err := os.Stat(resolved)
		if err != nil {
			return nil, fmt.Errorf("--import-dir %s: %w", d, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--import-dir %s is not a directory", d)
		}
		im.roots = append(im.roots, root{dir: filepath.Clean(d), resolved: resolved})
	}
	im.prunePartials()
	return im, nil
}

// Request is one import.
type Request struct {
	// Source is an http(s) URL or an absolute path under an import dir.
	Source string
	// SHA256 is the expected digest; or ChecksumURL names a checksum file
	// to read it from (a URL or path, as Source).
	SHA256, ChecksumURL string
	// CABundle holds PEM CA certificates for HTTPS; empty: system roots.
	CABundle []byte
	// Name, Version, OS, Arch default to what the source's file name says.
	Name, Version, OS, Arch string
	PushedBy                string
	// Audit returns the entry written with the record (artifact.PutRequest).
	Audit func(*ferryv1.Artifact, artifact.Pushed) *ferryv1.AuditEvent
	// Progress, when set, is told how far the import is.
	Progress func(Progress)
}

// Progress is how far an import is.
type Progress struct {
	Received, Total, ResumedFrom uint64
	Stage                        string // "checksum", "fetching", "verifying"
}

// Result is what an import did.
type Result struct {
	Artifact    *ferryv1.Artifact
	Pushed      artifact.Pushed
	Source      string // the source as it may be shown (no URL password)
	ResumedFrom uint64 // bytes an earlier transfer had kept
}

// source is a parsed Source or ChecksumURL.
type source struct {
	url  *url.URL // http(s); nil for a path
	path string   // absolute path on the controller
}

func (s source) String() string {
	if s.url != nil {
		return s.url.Redacted()
	}
	return s.path
}

// base is the file name the source ends in.
func (s source) base() string {
	if s.url != nil {
		return path.Base(s.url.Path)
	}
	return filepath.Base(s.path)
}

func parseSource(what, v string) (source, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return source{}, fmt.Errorf("%w: %s is empty: give an http(s):// URL or an absolute path on the controller", artifact.ErrInvalid, what)
	case strings.HasPrefix(v, "http://") || strings.HasPrefix(v, "https://"):
		u, err := url.Parse(v)
		if err != nil {
			return source{}, fmt.Errorf("%w: %s %q is not a URL: %w", artifact.ErrInvalid, what, v, err)
		}
		if u.Host == "" {
			return source{}, fmt.Errorf("%w: %s %q names no host", artifact.ErrInvalid, what, u.Redacted())
		}
		u.Fragment = ""
		return source{url: u}, nil
	case strings.HasPrefix(v, "file://"):
		u, err := url.Parse(v)
		if err != nil || (u.Host != "" && u.Host != "localhost") {
			return source{}, fmt.Errorf("%w: %s %q: a file URL names a path on the controller, file:///PATH", artifact.ErrInvalid, what, v)
		}
		v = u.Path
	case strings.Contains(v, "://"):
		return source{}, fmt.Errorf("%w: %s %q: only http://, https:// and paths on the controller can be imported", artifact.ErrInvalid, what, v)
	}
	if !filepath.IsAbs(v) {
		return source{}, fmt.Errorf("%w: %s %q: give the absolute path of the file on the controller (under its --import-dir), or an http(s):// URL", artifact.ErrInvalid, what, v)
	}
	return source{path: filepath.Clean(v)}, nil
}

// Import fetches req.Source, checks it against the expected digest and
// stores it. A refused or failed import records nothing.
func (im *Importer) Import(ctx context.Context, req Request) (Result, error) {
	src, err := parseSource("source", req.Source)
	if err != nil {
		return Result{}, err
	}
	res := Result{Source: src.String()}
	if len(req.CABundle) > maxCABundle {
		return res, fmt.Errorf("%w: the CA bundle is %d bytes, more than %d", artifact.ErrInvalid, len(req.CABundle), maxCABundle)
	}
	if src.path != "" {
		if _, _, err := im.resolve(src.path); err != nil {
			return res, err
		}
	}
	client, err := newClient(req.CABundle)
	if err != nil {
		return res, err
	}
	put, err := im.putRequest(req, src)
	if err != nil {
		return res, err
	}
	progress := func(p Progress) {
		if req.Progress != nil {
			req.Progress(p)
		}
	}
	want, err := im.expectedDigest(ctx, client, req, src, progress)
	if err != nil {
		return res, err
	}
	put.SHA256 = want
	if a, pushed, done, err := im.cfg.Store.PutIfKnown(put); done {
		res.Artifact, res.Pushed = a, pushed
		return res, err
	}
	if src.url != nil {
		res.Artifact, res.Pushed, res.ResumedFrom, err = im.fetchHTTP(ctx, client, src, put, progress)
	} else {
		res.Artifact, res.Pushed, err = im.readFile(ctx, src, put, progress)
	}
	return res, err
}

func (im *Importer) putRequest(req Request, src source) (artifact.PutRequest, error) {
	m := pushclient.InferMeta(src.base()).Override(pushclient.Meta{Name: req.Name, Version: req.Version, OS: req.OS, Arch: req.Arch})
	if m.Name == "" {
		return artifact.PutRequest{}, fmt.Errorf("%w: %s names no file; give the artifact a name with --name", artifact.ErrInvalid, src)
	}
	if m.Version == "" {
		return artifact.PutRequest{}, fmt.Errorf("%w: cannot tell a version from the file name %q; give one with --version", artifact.ErrInvalid, m.Name)
	}
	return artifact.PutRequest{Name: m.Name, Version: m.Version, OS: m.OS, Arch: m.Arch, PushedBy: req.PushedBy, Audit: req.Audit}, nil
}

// expectedDigest is req's digest, given or read from its checksum file.
func (im *Importer) expectedDigest(ctx context.Context, client *httpClient, req Request, src source, progress func(Progress)) (string, error) {
	switch {
	case req.SHA256 != "" && req.ChecksumURL != "":
		return "", fmt.Errorf("%w: give the checksum (--checksum) or where to read it (--checksum-url), not both", artifact.ErrInvalid)
	case req.SHA256 != "":
		h, err := sha256digest.ParseHex(req.SHA256)
		if err != nil {
			return "", fmt.Errorf("%w: --checksum %q: want sha256: and 64 hex digits", artifact.ErrInvalid, req.SHA256)
		}
		return h, nil
	case req.ChecksumURL == "":
		return "", fmt.Errorf("%w: an import needs the file's published checksum: give --checksum sha256:HEX or --checksum-url URL (a .sha256 or SHA256SUMS file)", artifact.ErrInvalid)
	}
	sumSrc, err := parseSource("checksum URL", req.ChecksumURL)
	if err != nil {
		return "", err
	}
	progress(Progress{Stage: "checksum"})
	var data []byte
	if sumSrc.url != nil {
		data, err = client.getSmall(ctx, sumSrc.url, maxChecksumFile)
	} else {
		data, err = im.readSmall(sumSrc.path, maxChecksumFile)
	}
	if err != nil {
		return "", err
	}
	h, err := pushclient.ParseChecksumFile(data, src.base())
	if err != nil {
		return "", fmt.Errorf("%w: checksum file %s: %w", artifact.ErrInvalid, sumSrc, err)
	}
	return h, nil
}

// Display is how a source may be shown and audited: a URL without its
// password.
func Display(src string) string {
	if s, err := parseSource("source", src); err == nil {
		return s.String()
	}
	return src
}
