package artifact_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

func tarball(t *testing.T, hdrs ...*tar.Header) (tarBytes, gz []byte) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, h := range hdrs {
		body := bytes.Repeat([]byte("content of "+h.Name+"\n"), 1000)
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
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(tb.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return tb.Bytes(), buf.Bytes()
}

// A pushed tar.gz gets a zstd form beside it, served by its own digest,
// holding the original's tar stream; removing the artifact removes both.
func TestPushTranscodesTarball(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	raw, gz := tarball(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/bin/go", Typeflag: tar.TypeReg, Mode: 0o755})
	resp, err := h.push("go1.20.3.linux-amd64.tar.gz", "1.20.3", gz, "")
	if err != nil {
		t.Fatal(err)
	}
	a := resp.Artifact
	if a.Digest != sha(gz) || a.ZstdDigest == "" || a.ZstdDigest == a.Digest {
		t.Fatalf("pushed artifact %s (zstd form %q), want the original's digest %s and a zstd form", a.Digest, a.ZstdDigest, sha(gz))
	}
	zst, err := h.download(context.Background(), a.ZstdDigest, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sha(zst) != a.ZstdDigest || uint64(len(zst)) != a.ZstdSize {
		t.Fatalf("the zstd form downloaded hashes to %s with %d bytes; the record says %s, %d", sha(zst), len(zst), a.ZstdDigest, a.ZstdSize)
	}
	dec, err := zstd.NewReader(bytes.NewReader(zst))
	if err != nil {
		t.Fatal(err)
	}
	inner, err := io.ReadAll(dec)
	dec.Close()
	if err != nil || !bytes.Equal(inner, raw) {
		t.Fatalf("the zstd form holds %d bytes (%v), not the original's tar stream of %d", len(inner), err, len(raw))
	}
	// The original is still served as it was pushed.
	if got, err := h.download(context.Background(), a.Digest, 0); err != nil || !bytes.Equal(got, gz) {
		t.Fatalf("download of the original: %d bytes, %v", len(got), err)
	}
	h.checkConsistent()
	// The zstd form's digest names the artifact too (an agent's failed
	// download prints it), and a byte flipped in the zstd form quarantines
	// the artifact: agents download that form.
	byZstd, err := h.st.Resolve(sha256digest.Short(a.ZstdDigest))
	if err != nil || byZstd.Digest != a.Digest {
		t.Fatalf("resolve %s: %v, %v; want the artifact %s", sha256digest.Short(a.ZstdDigest), byZstd, err, a.Digest)
	}
	zpath := filepath.Join(h.st.BlobDir(), strings.TrimPrefix(a.ZstdDigest, sha256digest.Prefix))
	bad := bytes.Clone(zst)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(zpath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	var checked []artifact.Check
	if err := h.st.Verify(context.Background(), a.Name+"@"+a.Version, func(c artifact.Check) error { checked = append(checked, c); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(checked) != 1 || !checked[0].Damaged() {
		t.Fatalf("verify after the zstd form was damaged: %+v, want the artifact damaged", checked)
	}
	if err := os.WriteFile(zpath, zst, 0o600); err != nil {
		t.Fatal(err)
	}
	checked = nil
	if err := h.st.Verify(context.Background(), a.Name+"@"+a.Version, func(c artifact.Check) error { checked = append(checked, c); return nil }); err != nil || len(checked) != 1 || checked[0].Damaged() {
		t.Fatalf("verify after the zstd form's bytes came back: %+v, %v; want it ok", checked, err)
	}
	// After a restart, cleanup keeps the zstd form (its record names it).
	h.open(harnessOpts{})
	h.checkConsistent()
	if _, err := h.st.Delete(a.Name+"@"+a.Version, nil); err != nil {
		t.Fatal(err)
	}
	if blobs, _ := os.ReadDir(h.st.BlobDir()); len(blobs) != 0 {
		t.Errorf("removing the artifact left %d blobs", len(blobs))
	}
}

// A push of a tarball the agents would refuse is refused: nothing is
// recorded, no blob is kept.
func TestPushRefusesUnsafeTarball(t *testing.T) {
	_, good := tarball(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/VERSION", Typeflag: tar.TypeReg, Mode: 0o644})
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0xff
	_, traversal := tarball(t, &tar.Header{Name: "go/../../etc/cron.d/x", Typeflag: tar.TypeReg, Mode: 0o644})
	_, escaping := tarball(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/lib", Typeflag: tar.TypeSymlink, Linkname: "../../../usr/lib"})
	_, device := tarball(t, &tar.Header{Name: "go/", Typeflag: tar.TypeDir, Mode: 0o755}, &tar.Header{Name: "go/sda", Typeflag: tar.TypeBlock, Devmajor: 8})
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"corrupt", corrupt, "damaged"},
		{"path traversal", traversal, `".."`},
		{"escaping symlink", escaping, "outside the destination"},
		{"device file", device, "device file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{})
			_, err := h.push("go1.20.3.linux-amd64.tar.gz", "1.20.3", tc.data, "")
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "the upload was discarded") {
				t.Fatalf("push of a %s tarball: %v; want InvalidArgument naming %q and that nothing was kept", tc.name, err, tc.want)
			}
			if recs, _ := h.st.List(""); len(recs) != 0 {
				t.Errorf("a refused push recorded %d artifacts", len(recs))
			}
			if blobs, _ := os.ReadDir(h.st.BlobDir()); len(blobs) != 0 {
				t.Errorf("a refused push left %d blobs", len(blobs))
			}
			h.checkConsistent()
		})
	}
}
