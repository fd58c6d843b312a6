package fetch

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// readStream reads a Download to its end, as an extractor does.
func readStream(t *testing.T, d *Download) ([]byte, *Reader, error) {
	t.Helper()
	r := d.Reader()
	defer r.Close()
	got, err := io.ReadAll(r)
	return got, r, err
}

// A reader follows the download through streams cut at random offsets
// and reads exactly the artifact; once Wait returned the verified file the
// reader says every byte it read was that file's.
func TestStreamReadsWhileDownloading(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 64 << 10
	data := randomBytes(40, 3<<20+77)
	digest := fake.add(data)
	rng := rand.New(rand.NewPCG(4, 5))
	var mu sync.Mutex
	fake.cut = func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return rng.Int64N(512 << 10)
	}
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), func(c *Config) { c.Retries = 10 })
	d := f.Stream(context.Background(), digest, uint64(len(data)), nil)
	got, r, err := readStream(t, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d of %d bytes while downloading (%v), or they differ", len(got), len(data), err)
	}
	path, err := d.Wait(context.Background())
	if err != nil || !bytes.Equal(readFile(t, path), data) {
		t.Fatalf("Wait = %s, %v", path, err)
	}
	if !r.Verified() {
		t.Error("the reader read the verified file but does not say so")
	}
	if fake.streams.Load() < 3 {
		t.Errorf("only %d streams: the test did not cut", fake.streams.Load())
	}
}

// After an agent restart the reader starts with what is on disk and the
// download resumes from there; an artifact already cached is read whole.
func TestStreamResumesAndReadsCached(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 256 << 10
	data := randomBytes(41, 4<<20)
	digest := fake.add(data)
	client := dial(t, p, serve(t, p, fake))
	dir := t.TempDir()
	have := interrupt(t, newFetcher(t, dir, client, nil), digest, uint64(len(data)), 1<<20)
	fake.idle(t)
	before := fake.served.Load()
	f := newFetcher(t, dir, client, nil)
	for _, when := range []string{"resumed", "cached"} {
		d := f.Stream(context.Background(), digest, uint64(len(data)), nil)
		got, r, err := readStream(t, d)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read %d of %d bytes (%v), or they differ", when, len(got), len(data), err)
		}
		if _, err := d.Wait(context.Background()); err != nil || !r.Verified() {
			t.Fatalf("%s: Wait: %v; verified %v", when, err, r.Verified())
		}
	}
	if got, want := fake.served.Load()-before, int64(len(data))-int64(have); got != want {
		t.Errorf("the resumed download fetched %d bytes; %d were missing", got, want)
	}
}

// A staging file that does not match is discarded and fetched again: a
// reader that read the discarded bytes is never taken for verified.
func TestStreamReaderOfDiscardedBytesIsNotVerified(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(42, 2<<20)
	digest := fake.add(data)
	client := dial(t, p, serve(t, p, fake))
	dir := t.TempDir()
	have := interrupt(t, newFetcher(t, dir, client, nil), digest, uint64(len(data)), 1<<20)
	stage := filepath.Join(dir, "downloads", digest[len(sha256digest.Prefix):]+".partial")
	b := readFile(t, stage)
	b[have/2] ^= 0x40
	writeFile(t, stage, b)

	d := newFetcher(t, dir, client, nil).Stream(context.Background(), digest, uint64(len(data)), nil)
	got, r, err := readStream(t, d)
	path, werr := d.Wait(context.Background())
	if werr != nil || !bytes.Equal(readFile(t, path), data) {
		t.Fatalf("Wait = %s, %v; want the artifact fetched again", path, werr)
	}
	if r.Verified() {
		t.Fatalf("a reader of the discarded download (read %d bytes, %v; equal to the artifact: %v) says it read the verified file", len(got), err, bytes.Equal(got, data))
	}
}
