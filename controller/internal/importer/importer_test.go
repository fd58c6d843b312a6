package importer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
	"github.com/ferrydeploy/ferry/controller/internal/store"
)

const fileName = "go1.20.3.linux-amd64.tar.gz"

type env struct {
	t       *testing.T
	db      *store.Store
	st      *artifact.Store
	dir     string // the artifact dir
	share   string // an import dir
	content []byte
	digest  string // hex
}

func newEnv(t *testing.T) *env {
	t.Helper()
	base := t.TempDir()
	db, err := store.Open(filepath.Join(base, "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	dir := filepath.Join(base, "artifacts")
	st, err := artifact.Open(artifact.Config{Dir: dir, Records: db, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("the Go toolchain, not really\n"), 100_000) // ~2.9 MB: several chunks
	sum := sha256.Sum256(content)
	share := filepath.Join(base, "share")
	if err := os.MkdirAll(share, 0o755); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, st: st, dir: dir, share: share, content: content, digest: hex.EncodeToString(sum[:])}
}

func (e *env) importer(mod func(*importer.Config)) *importer.Importer {
	e.t.Helper()
	cfg := importer.Config{Store: e.st, Dirs: []string{e.share}, RetryWait: func(int) time.Duration { return 0 }, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	im, err := importer.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return im
}

// stored asserts what the store holds: the artifacts, blobs and staged
// files there are.
func (e *env) stored(artifacts, blobs, staged int) {
	e.t.Helper()
	all, err := e.db.Artifacts()
	if err != nil {
		e.t.Fatal(err)
	}
	count := func(d string) int {
		ents, err := os.ReadDir(filepath.Join(e.dir, d))
		if err != nil {
			e.t.Fatal(err)
		}
		return len(ents)
	}
	if len(all) != artifacts || count("sha256") != blobs || count("staging") != staged || count("tmp") != 0 {
		e.t.Errorf("store holds %d artifacts, %d blobs, %d staged, %d temp files; want %d, %d, %d, 0", len(all), count("sha256"), count("staging"), count("tmp"), artifacts, blobs, staged)
	}
}

// server serves the file with an ETag (http.ServeContent honours Range
// and If-Range). cutFirst requests are cut after half the body.
type server struct {
	mu       sync.Mutex
	content  []byte
	etag     string
	cutFirst int
	requests []*http.Request
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.Clone(context.Background()))
	cut := s.cutFirst > 0
	s.cutFirst--
	content, etag := s.content, s.etag
	s.mu.Unlock()
	switch r.URL.Path {
	case "/go/" + fileName:
	case "/go/SHA256SUMS":
		sum := sha256.Sum256(content)
		fmt.Fprintf(w, "%s  other.tar.gz\n%s  %s\n", strings.Repeat("0", 64), hex.EncodeToString(sum[:]), fileName)
		return
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", etag)
	if cut && r.Header.Get("Range") == "" {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops halfway
	}
	http.ServeContent(w, r, fileName, time.Time{}, bytes.NewReader(content))
}

func (s *server) ranges() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.requests {
		if r.URL.Path == "/go/"+fileName {
			out = append(out, r.Header.Get("Range")+"|"+r.Header.Get("If-Range"))
		}
	}
	return out
}

func newServer(t *testing.T, content []byte, tlsServer bool) (*server, *httptest.Server) {
	s := &server{content: content, etag: `"v1"`}
	var srv *httptest.Server
	if tlsServer {
		srv = httptest.NewTLSServer(s)
	} else {
		srv = httptest.NewServer(s)
	}
	t.Cleanup(srv.Close)
	return s, srv
}

func TestImportHTTP(t *testing.T) {
	e := newEnv(t)
	s, srv := newServer(t, e.content, false)
	im := e.importer(nil)
	var stages []string
	res, err := im.Import(context.Background(), importer.Request{
		Source: srv.URL + "/go/" + fileName, ChecksumURL: srv.URL + "/go/SHA256SUMS", PushedBy: "admin/alice",
		Progress: func(p importer.Progress) {
			if len(stages) == 0 || stages[len(stages)-1] != p.Stage {
				stages = append(stages, p.Stage)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	a := res.Artifact
	if a.Digest != "sha256:"+e.digest || a.Name != fileName || a.Version != "1.20.3" || a.Os != "linux" || a.Arch != "amd64" || a.Size != uint64(len(e.content)) || a.PushedBy != "admin/alice" || res.Pushed != artifact.Created {
		t.Errorf("imported %v (%v)", a, res.Pushed)
	}
	if got := strings.Join(stages, ","); got != "checksum,fetching,verifying" {
		t.Errorf("progress stages %s", got)
	}
	blob, err := os.ReadFile(filepath.Join(e.dir, "sha256", e.digest))
	if err != nil || !bytes.Equal(blob, e.content) {
		t.Errorf("stored blob: %v, %d bytes", err, len(blob))
	}
	e.stored(1, 1, 0)

	// The same import again fetches nothing.
	before := len(s.ranges())
	res, err = im.Import(context.Background(), importer.Request{Source: srv.URL + "/go/" + fileName, SHA256: "sha256:" + e.digest})
	if err != nil || res.Pushed != artifact.Unchanged || len(s.ranges()) != before {
		t.Errorf("second import: %v, %v, %d requests", res.Pushed, err, len(s.ranges())-before)
	}
}

// The transfer drops halfway; the next request asks for the rest with the
// ETag it started with, and the whole file is stored.
func TestImportResumesDroppedTransfer(t *testing.T) {
	e := newEnv(t)
	s, srv := newServer(t, e.content, false)
	s.cutFirst = 1
	res, err := e.importer(nil).Import(context.Background(), importer.Request{Source: srv.URL + "/go/" + fileName, SHA256: e.digest})
	if err != nil {
		t.Fatal(err)
	}
	got := s.ranges()
	if len(got) != 2 || got[0] != "|" || !strings.HasPrefix(got[1], "bytes=") || !strings.HasSuffix(got[1], `-|"v1"`) {
		t.Errorf("requests (Range|If-Range): %q; want one whole, then one resuming with the ETag", got)
	}
	if res.Artifact.Digest != "sha256:"+e.digest || res.ResumedFrom != 0 {
		t.Errorf("imported %s, resumed from %d", res.Artifact.Digest, res.ResumedFrom)
	}
	e.stored(1, 1, 0)
}

// An import that gives up keeps its partial; run again, it resumes from it.
func TestImportResumesAcrossRuns(t *testing.T) {
	e := newEnv(t)
	s, srv := newServer(t, e.content, false)
	s.cutFirst = 1
	req := importer.Request{Source: srv.URL + "/go/" + fileName, SHA256: e.digest}
	_, err := e.importer(func(c *importer.Config) { c.Attempts = 1 }).Import(context.Background(), req)
	if !errors.Is(err, importer.ErrFetch) || !strings.Contains(err.Error(), "run the import again to resume") {
		t.Fatalf("cut import: %v", err)
	}
	e.stored(0, 0, 2) // the partial and what it knows of the file
	res, err := e.importer(nil).Import(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom == 0 || res.ResumedFrom >= uint64(len(e.content)) {
		t.Errorf("resumed from %d of %d", res.ResumedFrom, len(e.content))
	}
	if got := s.ranges(); len(got) != 2 || got[1] != fmt.Sprintf(`bytes=%d-|"v1"`, res.ResumedFrom) {
		t.Errorf("requests %q", got)
	}
	e.stored(1, 1, 0)

	// A file that changed since the partial was kept is fetched whole:
	// If-Range does not match, the server sends 200.
	e2 := newEnv(t)
	s.mu.Lock()
	s.cutFirst = 1
	s.mu.Unlock()
	req.SHA256 = e2.digest
	if _, err := e2.importer(func(c *importer.Config) { c.Attempts = 1 }).Import(context.Background(), req); err == nil {
		t.Fatal("cut import succeeded")
	}
	s.mu.Lock()
	s.etag = `"v2"`
	s.mu.Unlock()
	if _, err := e2.importer(nil).Import(context.Background(), req); err != nil {
		t.Fatalf("import after the file changed: %v", err)
	}
	e2.stored(1, 1, 0)
}

// A wrong checksum leaves no artifact, no blob and no partial.
func TestImportWrongChecksum(t *testing.T) {
	e := newEnv(t)
	_, srv := newServer(t, e.content, false)
	wrong := strings.Repeat("ab", 32)
	path := filepath.Join(e.share, fileName)
	if err := os.WriteFile(path, e.content, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{srv.URL + "/go/" + fileName, path} {
		_, err := e.importer(nil).Import(context.Background(), importer.Request{Source: src, SHA256: "sha256:" + wrong})
		if !errors.Is(err, artifact.ErrChecksumMismatch) || !strings.Contains(err.Error(), "got sha256:"+e.digest+", want sha256:"+wrong) {
			t.Errorf("%s: %v; want a sha256 mismatch with both digests", src, err)
		}
		e.stored(0, 0, 0)
	}
}

func TestImportHTTPErrors(t *testing.T) {
	e := newEnv(t)
	_, srv := newServer(t, e.content, false)
	_, tlsSrv := newServer(t, e.content, true)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	im := e.importer(func(c *importer.Config) { c.MaxSize = 1 << 20 })
	for _, tc := range []struct {
		name string
		req  importer.Request
		is   error
		want string
	}{
		{"not found", importer.Request{Source: srv.URL + "/go/missing-1.0.tar.gz", SHA256: e.digest}, importer.ErrFetch, "the server answered HTTP 404 Not Found"},
		{"checksum file not found", importer.Request{Source: srv.URL + "/go/" + fileName, ChecksumURL: srv.URL + "/go/nope.sha256"}, importer.ErrFetch, "HTTP 404"},
		{"no checksum", importer.Request{Source: srv.URL + "/go/" + fileName}, artifact.ErrInvalid, "--checksum sha256:HEX or --checksum-url"},
		{"too large", importer.Request{Source: srv.URL + "/go/" + fileName, SHA256: e.digest}, importer.ErrTooLarge, "more than the import limit of 1048576"},
		{"unknown CA", importer.Request{Source: tlsSrv.URL + "/go/" + fileName, SHA256: e.digest}, importer.ErrFetch, "TLS verification failed: the server's certificate is not signed by a trusted CA"},
		{"bad CA bundle", importer.Request{Source: tlsSrv.URL + "/go/" + fileName, SHA256: e.digest, CABundle: []byte("nope")}, artifact.ErrInvalid, "holds no PEM certificate"},
		{"other scheme", importer.Request{Source: "ftp://repo/" + fileName, SHA256: e.digest}, artifact.ErrInvalid, "only http://, https://"},
		{"relative path", importer.Request{Source: fileName, SHA256: e.digest}, artifact.ErrInvalid, "absolute path"},
		{"refused", importer.Request{Source: "http://127.0.0.1:1/" + fileName, SHA256: e.digest}, importer.ErrFetch, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := im.Import(context.Background(), tc.req)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want %v containing %q", err, tc.is, tc.want)
			}
			e.stored(0, 0, 0)
		})
	}
	if _, err := im.Import(context.Background(), importer.Request{Source: tlsSrv.URL + "/go/" + fileName, SHA256: e.digest}); !strings.Contains(err.Error(), "--ca-bundle FILE") {
		t.Errorf("unknown CA: %v; want the fix --ca-bundle named", err)
	}
	// With the CA bundle, the TLS server is trusted.
	res, err := e.importer(nil).Import(context.Background(), importer.Request{Source: tlsSrv.URL + "/go/" + fileName, ChecksumURL: tlsSrv.URL + "/go/SHA256SUMS", CABundle: caPEM})
	if err != nil || res.Artifact.Digest != "sha256:"+e.digest {
		t.Fatalf("import over TLS with --ca-bundle: %v", err)
	}
	e.stored(1, 1, 0)
}

func TestImportPath(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.share, "releases", fileName)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, e.content, 0o644); err != nil {
		t.Fatal(err)
	}
	sums := filepath.Join(e.share, "releases", "SHA256SUMS")
	if err := os.WriteFile(sums, []byte(e.digest+" *"+fileName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), fileName)
	if err := os.WriteFile(outside, e.content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(e.share, "link-1.0.tar.gz")); err != nil {
		t.Fatal(err)
	}
	im := e.importer(nil)
	for _, tc := range []struct {
		name, src string
		is        error
		want      string
	}{
		{"outside", outside, importer.ErrRefused, "is not under an import directory of this controller (" + e.share + ")"},
		{"dot dot", e.share + "/../" + filepath.Base(filepath.Dir(outside)) + "/" + fileName, importer.ErrRefused, "not under an import directory"},
		{"symlink out", filepath.Join(e.share, "link-1.0.tar.gz"), importer.ErrRefused, "may not lead out of the import directory"},
		{"missing", filepath.Join(e.share, "nope-1.0.tar.gz"), importer.ErrFetch, "no such file on the controller"},
		{"directory", filepath.Join(e.share, "releases-1.0"), importer.ErrFetch, "no such file"},
		{"controller files", "/etc/shadow-1.0", importer.ErrRefused, "not under an import directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := im.Import(context.Background(), importer.Request{Source: tc.src, SHA256: e.digest})
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want %v containing %q", err, tc.is, tc.want)
			}
		})
	}
	e.stored(0, 0, 0)
	// Without --import-dir, path imports are refused, naming the flag.
	_, err := e.importer(func(c *importer.Config) { c.Dirs = nil }).Import(context.Background(), importer.Request{Source: path, SHA256: e.digest})
	if !errors.Is(err, importer.ErrRefused) || !strings.Contains(err.Error(), "start it with --import-dir DIR") {
		t.Errorf("without import dirs: %v", err)
	}
	res, err := im.Import(context.Background(), importer.Request{Source: path, ChecksumURL: sums, PushedBy: "admin/alice"})
	if err != nil || res.Artifact.Digest != "sha256:"+e.digest || res.Pushed != artifact.Created || res.Artifact.Version != "1.20.3" {
		t.Fatalf("path import: %v %v", res.Artifact, err)
	}
	e.stored(1, 1, 0)
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the source file is gone: %v", err)
	}
}

func TestNewImportDirs(t *testing.T) {
	e := newEnv(t)
	file := filepath.Join(e.share, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, want string }{
		{"relative", "give an absolute path"},
		{filepath.Join(e.share, "missing"), "no such file"},
		{file, "is not a directory"},
	} {
		if _, err := importer.New(importer.Config{Store: e.st, Dirs: []string{tc.dir}}); err == nil || !strings.Contains(err.Error(), "--import-dir") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--import-dir %s: %v; want %q", tc.dir, err, tc.want)
		}
	}
}
