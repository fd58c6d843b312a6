package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The zstd form extracts to the same tree as the original, and the tar
// stream inside it is the original's, byte for byte.
func TestTranscodeRoundTrip(t *testing.T) {
	orig := tarBytes(t, dir("go/"), dir("go/bin/"), file("go/bin/go", "#!/bin/sh\necho go1.20.3\n"), symlink("go/bin/gofmt", "go"), hardlink("go/bin/go2", "go/bin/go"))
	for _, c := range []struct {
		name string
		data []byte
	}{{"go.tar.gz", gz(t, orig)}, {"go.tar", orig}} {
		t.Run(c.name, func(t *testing.T) {
			var zst bytes.Buffer
			res, err := Transcode(context.Background(), bytes.NewReader(c.data), c.name, &zst)
			if err != nil {
				t.Fatal(err)
			}
			if res.Entries != 5 {
				t.Errorf("transcode checked %d entries, want 5", res.Entries)
			}
			zr, err := newZstdReader(bytes.NewReader(zst.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			var inner bytes.Buffer
			if _, err := inner.ReadFrom(zr); err != nil {
				t.Fatal(err)
			}
			zr.Close()
			if !bytes.Equal(inner.Bytes(), orig) {
				t.Fatalf("the zstd form holds %d bytes of tar that differ from the original's %d", inner.Len(), len(orig))
			}
			src, parent, dest := setup(t, zst.Bytes())
			o := opts()
			o.StripComponents = 1
			got, err := Extract(context.Background(), src, dest, o) // format detected
			if err != nil {
				t.Fatal(err)
			}
			if got.Format != FormatTarZst {
				t.Errorf("detected %q, want %q", got.Format, FormatTarZst)
			}
			mustRead(t, filepath.Join(dest, "bin", "go"), "#!/bin/sh\necho go1.20.3\n")
			mustRead(t, filepath.Join(dest, "bin", "go2"), "#!/bin/sh\necho go1.20.3\n")
			if l, err := os.Readlink(filepath.Join(dest, "bin", "gofmt")); err != nil || l != "go" {
				t.Errorf("gofmt links to %q (%v), want go", l, err)
			}
			assertContained(t, parent, dest)
		})
	}
}

// What the extractor refuses, the transcoder refuses: a damaged original
// and every kind of unsafe entry.
func TestTranscodeRefuses(t *testing.T) {
	good := gz(t, tarBytes(t, dir("go/"), file("go/a", string(bytes.Repeat([]byte("0123456789"), 10000)))))
	damaged := bytes.Clone(good)
	damaged[len(damaged)/2] ^= 0xff
	truncated := good[:len(good)-20]
	tests := []struct {
		name string
		data []byte
	}{
		{"damaged gzip", damaged},
		{"truncated gzip", truncated},
		{"dot dot", gz(t, tarBytes(t, file("../escape", "x")))},
		{"absolute path", tarBytes(t, file("/etc/passwd", "x"))},
		{"escaping symlink", gz(t, tarBytes(t, dir("go/"), symlink("go/l", "../../etc")))},
		{"write through a symlink", gz(t, tarBytes(t, dir("in/"), symlink("l", "in"), file("l/x", "x")))},
		{"device file", gz(t, tarBytes(t, ent{name: "null", typ: tar.TypeChar}))},
		{"fifo", gz(t, tarBytes(t, ent{name: "p", typ: tar.TypeFifo}))},
		{"duplicate entry", gz(t, tarBytes(t, file("a", "1"), file("a", "2")))},
		{"damaged tar header", gz(t, append(tarBytes(t, file("a", "1"))[:512+512], bytes.Repeat([]byte{'x'}, 1024)...))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var zst bytes.Buffer
			_, err := Transcode(context.Background(), bytes.NewReader(tt.data), "go.tar.gz", &zst)
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("transcode of a %s: %v, want a refusal (ErrUnsafe)", tt.name, err)
			}
		})
	}
}

// Files that are no tarball are left as they are, not refused.
func TestTranscodeLeavesOtherFiles(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"tool.bin", []byte("\x7fELF a binary, not an archive at all, long enough")},
		{"notes.txt.gz", gz(t, []byte("plain text, gzip-compressed, no tar inside"))},
		{"bundle.zip", zipBytes(t, file("a", "1"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var zst bytes.Buffer
			if _, err := Transcode(context.Background(), bytes.NewReader(tt.data), tt.name, &zst); !errors.Is(err, ErrNotTranscodable) {
				t.Fatalf("transcode of %s: %v, want ErrNotTranscodable", tt.name, err)
			}
		})
	}
	// With a tarball's name, the same gzip is a damaged tarball.
	var zst bytes.Buffer
	if _, err := Transcode(context.Background(), bytes.NewReader(tests[1].data), "notes.tar.gz", &zst); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("transcode of a gzip without a tar named .tar.gz: %v, want ErrUnsafe", err)
	}
}
