package artifact_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// scanCounter counts the reads of every artifact record.
type scanCounter struct {
	artifact.Records
	scans atomic.Int64
}

func (c *scanCounter) Artifacts() ([]*ferryv1.Artifact, error) {
	c.scans.Add(1)
	return c.Records.Artifacts()
}

// Lookups by digest (each download, verification, job dispatch) read the
// one record their digest names rather than every record, and stay true
// when another controller sharing the store deletes, re-pushes or adds
// records: the controller here is never told, and answers as the store is.
func TestLookupByDigestFollowsTheStore(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(filepath.Join(dir, "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	recs := &scanCounter{Records: db}
	here, err := artifact.Open(artifact.Config{Dir: filepath.Join(dir, "here"), Records: recs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := artifact.Open(artifact.Config{Dir: filepath.Join(dir, "other"), Records: db, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	push := func(st *artifact.Store, name, version string, body []byte) *ferryv1.Artifact {
		t.Helper()
		a, _, err := st.Put(context.Background(), artifact.PutRequest{Name: name, Version: version}, bytes.NewReader(body))
		if err != nil {
			t.Fatalf("push %s@%s: %v", name, version, err)
		}
		return a
	}
	form := func(digest string) (key, got string, size uint64) {
		t.Helper()
		f, err := here.LookupForm(digest)
		if err != nil {
			t.Fatalf("LookupForm %s: %v", digest, err)
		}
		return artifact.Key(f.Rec), f.Digest, f.Size
	}
	_, gz := tarball(t, &tar.Header{Name: "go/bin/go", Typeflag: tar.TypeReg, Mode: 0o755})
	goRec := push(here, "go.tar.gz", "1.20.3", gz)
	tool := push(here, "tool", "1.0", []byte("a tool binary"))
	if goRec.ZstdDigest == "" {
		t.Fatal("the tarball has no zstd form")
	}

	for _, c := range []struct {
		digest, key string
		size        uint64
	}{
		{goRec.Digest, "go.tar.gz@1.20.3", goRec.Size},
		{goRec.ZstdDigest, "go.tar.gz@1.20.3", goRec.ZstdSize},
		{tool.Digest, "tool@1.0", tool.Size},
	} {
		if key, got, size := form(c.digest); key != c.key || got != c.digest || size != c.size {
			t.Errorf("LookupForm %s: %s, %s, %d bytes; want %s, %s, %d bytes", c.digest, key, got, size, c.key, c.digest, c.size)
		}
	}
	if a, err := here.Lookup(tool.Digest); err != nil || artifact.Key(a) != "tool@1.0" {
		t.Errorf("Lookup %s: %v, %v; want tool@1.0", tool.Digest, a, err)
	}
	if _, err := here.Lookup(goRec.ZstdDigest); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("Lookup of a zstd form's digest: %v; want not found (Lookup finds originals)", err)
	}
	scans := recs.scans.Load()
	for range 10 {
		form(goRec.Digest)
		form(goRec.ZstdDigest)
		form(tool.Digest)
	}
	if n := recs.scans.Load() - scans; n != 0 {
		t.Errorf("30 lookups of known digests read every record %d times; want none (one record each)", n)
	}

	// Another controller removes tool@1.0: gone here too.
	if _, err := other.Delete("tool@1.0", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := here.LookupForm(tool.Digest); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("LookupForm of an artifact another controller removed: %v; want not found", err)
	}
	// It pushes the same bytes as tool@2.0, and a new artifact.
	push(other, "tool", "2.0", []byte("a tool binary"))
	if key, _, _ := form(tool.Digest); key != "tool@2.0" {
		t.Errorf("LookupForm after another controller pushed the bytes again: %s; want tool@2.0", key)
	}
	fresh := push(other, "fresh", "1.0", []byte("pushed elsewhere"))
	if key, _, _ := form(fresh.Digest); key != "fresh@1.0" {
		t.Errorf("LookupForm of an artifact another controller pushed: %s; want fresh@1.0", key)
	}
	// It removes fresh@1.0 and pushes other bytes under the same name:
	// the old digest is gone, the new one found.
	if _, err := other.Delete("fresh@1.0", nil); err != nil {
		t.Fatal(err)
	}
	refreshed := push(other, "fresh", "1.0", []byte("pushed elsewhere, again"))
	if _, err := here.LookupForm(fresh.Digest); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("LookupForm of bytes another controller replaced under their name: %v; want not found", err)
	}
	if key, _, _ := form(refreshed.Digest); key != "fresh@1.0" {
		t.Errorf("LookupForm of the replacing bytes: %s; want fresh@1.0", key)
	}
	if _, err := here.LookupForm("sha256:" + string(bytes.Repeat([]byte("ab"), 32))); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("LookupForm of a digest nobody pushed: %v; want not found", err)
	}
}
