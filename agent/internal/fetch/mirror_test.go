package fetch

import (
	"bytes"
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

// mirrorServer serves one artifact file the way a test case asks.
type mirrorServer struct {
	data   []byte
	mode   string // "ok", "wrong", "404", "hang", "short"
	hits   atomic.Int64
	closed chan struct{}
}

func (m *mirrorServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.hits.Add(1)
	switch m.mode {
	case "404":
		http.NotFound(w, r)
	case "wrong":
		bad := bytes.Clone(m.data)
		bad[len(bad)/3] ^= 0xff
		_, _ = w.Write(bad)
	case "short":
		_, _ = w.Write(m.data[:len(m.data)-1])
	case "hang":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-m.closed:
		}
	default:
		_, _ = w.Write(m.data)
	}
}

type noteLog struct {
	mu    sync.Mutex
	lines []string
}

func (n *noteLog) note(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lines = append(n.lines, s)
}

func (n *noteLog) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.lines, "\n")
}

// The mirror first; the controller when the mirror is down, errs, stalls,
// or serves wrong bytes; every result verified and cached.
func TestEnsureMirrored(t *testing.T) {
	p := pkitest.New(t)
	data := randomBytes(7, 3<<20+123)
	for _, tc := range []struct {
		name       string
		mode       string
		tls        bool
		withCA     bool
		down       bool
		fromMirror bool
		note       string
	}{
		{name: "mirror serves it", mode: "ok", fromMirror: true, note: "from the mirror"},
		{name: "https mirror with its CA", mode: "ok", tls: true, withCA: true, fromMirror: true, note: "digest verified"},
		{name: "https mirror, CA unknown", mode: "ok", tls: true, note: "certificate"},
		{name: "mirror down", mode: "ok", down: true, note: "connection refused"},
		{name: "mirror 404", mode: "404", note: "HTTP 404 Not Found"},
		{name: "wrong bytes", mode: "wrong", note: "served wrong bytes, discarded: bytes do not match the digest: got sha256:"},
		{name: "short", mode: "short", note: "served wrong bytes"},
		{name: "stalls", mode: "hang", note: "no bytes for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			digest := fake.add(data)
			client := dial(t, p, serve(t, p, fake))
			f := newFetcher(t, t.TempDir(), client, func(c *Config) { c.StallTimeout = 300 * time.Millisecond })
			ms := &mirrorServer{data: data, mode: tc.mode, closed: make(chan struct{})}
			var srv *httptest.Server
			if tc.tls {
				srv = httptest.NewTLSServer(ms)
			} else {
				srv = httptest.NewServer(ms)
			}
			src := &ferryv1.MirrorSource{Url: srv.URL + "/go1.20.3.linux-amd64.tar.gz"}
			if tc.withCA {
				src.CaBundle = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
			}
			if tc.down {
				srv.Close()
			} else {
				t.Cleanup(func() { close(ms.closed); srv.Close() })
			}
			var notes noteLog
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			path, err := f.EnsureMirrored(ctx, digest, uint64(len(data)), []*ferryv1.MirrorSource{src}, notes.note, func(uint64, uint64) {})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, path), data) {
				t.Fatal("the cached file differs from the artifact")
			}
			fake.idle(t)
			if served := fake.served.Load(); tc.fromMirror != (served == 0) {
				t.Errorf("the controller served %d bytes; want from the mirror: %v", served, tc.fromMirror)
			}
			wantHits := int64(1)
			if tc.down || (tc.tls && !tc.withCA) {
				wantHits = 0 // no request reaches the handler
			}
			if ms.hits.Load() != wantHits {
				t.Errorf("mirror asked %d times; want %d", ms.hits.Load(), wantHits)
			}
			if !strings.Contains(notes.String(), tc.note) || (!tc.fromMirror && !strings.Contains(notes.String(), "fetching from the controller")) {
				t.Errorf("job log notes:\n%s\nwant %q", notes.String(), tc.note)
			}
			// Cached now: neither the mirror nor the controller is asked again.
			hits, served := ms.hits.Load(), fake.served.Load()
			if _, err := f.EnsureMirrored(ctx, digest, uint64(len(data)), []*ferryv1.MirrorSource{src}, notes.note, func(uint64, uint64) {}); err != nil {
				t.Fatal(err)
			}
			if ms.hits.Load() != hits || fake.served.Load() != served {
				t.Error("a cached artifact was fetched again")
			}
		})
	}
}
