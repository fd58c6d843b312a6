package importer_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
)

func tarGz(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		body := []byte("content of " + h.Name)
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// An import transcodes a tarball as a push does: a good one gets its zstd
// form beside it, and one the agents would refuse is refused with nothing
// kept, by path and over HTTP.
func TestImportTranscodes(t *testing.T) {
	good := tarGz(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/VERSION", Typeflag: tar.TypeReg, Mode: 0o644})
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)-10] ^= 0xff // the gzip trailer's CRC or size
	escaping := tarGz(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/l", Typeflag: tar.TypeSymlink, Linkname: "../../etc/shadow"})
	for _, via := range []string{"path", "http"} {
		t.Run(via, func(t *testing.T) {
			for _, tc := range []struct {
				name    string
				content []byte
				refused bool
			}{{"corrupt", corrupt, true}, {"escaping symlink", escaping, true}, {"good", good, false}} {
				e := newEnv(t)
				src := filepath.Join(e.share, "go1.20.3.linux-amd64.tar.gz")
				if err := os.WriteFile(src, tc.content, 0o644); err != nil {
					t.Fatal(err)
				}
				if via == "http" {
					srv := httptest.NewServer(http.FileServer(http.Dir(e.share)))
					t.Cleanup(srv.Close)
					src = srv.URL + "/go1.20.3.linux-amd64.tar.gz"
				}
				sum := sha256.Sum256(tc.content)
				res, err := e.importer(nil).Import(context.Background(), importer.Request{Source: src, SHA256: hex.EncodeToString(sum[:])})
				if tc.refused {
					if !errors.Is(err, artifact.ErrUnsafeArchive) {
						t.Fatalf("%s: import of a %s tarball: %v, want ErrUnsafeArchive", via, tc.name, err)
					}
					e.stored(0, 0, 0)
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if res.Artifact.ZstdDigest == "" || res.Artifact.ZstdSize == 0 {
					t.Fatalf("%s: the imported tarball has no zstd form: %v", via, res.Artifact)
				}
				e.stored(1, 2, 0)
			}
		})
	}
}
