package fetch

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/faultproxy"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeFile creates path, and its directory, with data.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestEnsureDownloadsVerifiesAndCaches(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(1, 5<<20+17)
	digest := fake.add(data)
	dir := t.TempDir()
	f := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), nil)

	var last, total uint64
	monotonic := true
	path, err := f.Ensure(context.Background(), digest, uint64(len(data)), func(done, tot uint64) {
		if done < last {
			monotonic = false
		}
		last, total = done, tot
	})
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "cache", digest[len(sha256digest.Prefix):]) || !bytes.Equal(readFile(t, path), data) {
		t.Fatalf("Ensure returned %s; want the cached, complete file", path)
	}
	if !monotonic || last != uint64(len(data)) || total != uint64(len(data)) {
		t.Errorf("progress ended at %d/%d (monotonic %v), want %d/%d", last, total, monotonic, len(data), len(data))
	}
	if got := entries(t, filepath.Join(dir, "downloads")); len(got) != 0 {
		t.Errorf("staging files left: %v", got)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("cached artifact is writable (%v)", fi.Mode())
	}

	// Cached: nothing is fetched again, also with the size unknown.
	served := fake.served.Load()
	for _, size := range []uint64{uint64(len(data)), 0} {
		again, err := f.Ensure(context.Background(), digest, size, nil)
		if err != nil || again != path {
			t.Fatalf("second Ensure = %s, %v", again, err)
		}
	}
	if fake.served.Load() != served {
		t.Errorf("a cached artifact was fetched again (%d more bytes)", fake.served.Load()-served)
	}
	if p, ok := f.Path(digest); !ok || p != path {
		t.Errorf("Path = %s, %v", p, ok)
	}
}

func TestEnsureUnknownSizeAndEmptyArtifact(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(2, 300000)
	digest, empty := fake.add(data), fake.add(nil)
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), nil)
	for _, tc := range []struct {
		digest string
		want   []byte
	}{{digest, data}, {empty, nil}} {
		path, err := f.Ensure(context.Background(), tc.digest, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, path); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %d bytes, want %d", tc.digest, len(got), len(tc.want))
		}
	}
}

func TestEnsureErrors(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(3, 100000)
	digest := fake.add(data)
	dir := t.TempDir()
	f := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), nil)
	ctx := context.Background()

	cases := []struct {
		name   string
		digest string
		size   uint64
		is     error
		msg    string
	}{
		{"unknown digest", digestOf([]byte("never pushed")), 0, ErrNotFound, "no artifact has digest"},
		{"malformed digest", "sha256:XYZ", 0, nil, "64 lowercase hex"},
		{"md5 digest", "md5:" + strings.Repeat("a", 32), 0, nil, "want sha256:"},
		{"wrong size", digest, uint64(len(data)) + 1, nil, "the controller says it has 100000 bytes, 100001 were expected"},
		{"size no file can hold", digest, math.MaxUint64, nil, "more than a file can hold"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.Ensure(ctx, tc.digest, tc.size, nil)
			if err == nil || !strings.Contains(err.Error(), tc.msg) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("err = %v, want one mentioning %q (is %v)", err, tc.msg, tc.is)
			}
		})
	}
	if got := entries(t, filepath.Join(dir, "cache")); len(got) != 0 {
		t.Errorf("cache holds %v after failures", got)
	}
	if got := entries(t, filepath.Join(dir, "downloads")); len(got) > 1 {
		// At most the wrong-size download's staging file, kept to resume.
		t.Errorf("staging holds %v", got)
	}
}

func TestEnsureSurvivesStreamsCutAtRandomOffsets(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 64 << 10
	data := randomBytes(4, 4<<20+333)
	digest := fake.add(data)
	rng := rand.New(rand.NewPCG(3, 4))
	var mu sync.Mutex
	fake.cut = func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return rng.Int64N(256 << 10) // often mid-chunk, sometimes 0
	}
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), func(c *Config) { c.Retries = 5 })
	path, err := f.Ensure(context.Background(), digest, uint64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, path), data) {
		t.Fatal("the reassembled file differs from the artifact")
	}
	if streams := fake.streams.Load(); streams < 20 {
		t.Errorf("only %d streams: the test did not cut often", streams)
	}
	if served := fake.served.Load(); served != int64(len(data)) {
		t.Errorf("served %d bytes for a %d-byte artifact: resumed downloads must not fetch bytes twice", served, len(data))
	}
	t.Logf("%d streams", fake.streams.Load())
}

func TestEnsureThroughFlakyConnection(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	// Progress needs whole messages: with the controller's 1 MiB chunks a
	// link that breaks more often than every MiB gets nowhere, so the
	// fetcher asks for smaller chunks until streams bring some.
	data := randomBytes(5, 3<<20)
	digest := fake.add(data)
	proxy := faultproxy.New(t, faultproxy.Config{Target: serve(t, p, fake), Faults: faultproxy.ResetBetween(64<<10, 768<<10, 7)})
	f := newFetcher(t, t.TempDir(), dial(t, p, proxy.Addr()), func(c *Config) { c.Retries = 20 })
	ensureWithin(t, f, 30*time.Second, digest, data)
	if proxy.Resets() < 3 {
		t.Errorf("only %d connections were cut", proxy.Resets())
	}
	t.Logf("%d connections cut, %d streams", proxy.Resets(), fake.streams.Load())
}

// interrupt runs Ensure until at least n bytes are on disk and cancels it,
// as an agent killed mid-download leaves its staging file.
func interrupt(t *testing.T, f *Fetcher, digest string, size uint64, n uint64) uint64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := f.Ensure(ctx, digest, size, func(done, _ uint64) {
		if done >= n {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Ensure: %v, want context.Canceled", err)
	}
	fi, err := os.Stat(f.stagePath(digest[len(sha256digest.Prefix):]))
	if err != nil {
		t.Fatalf("no staging file after an interrupted download: %v", err)
	}
	return uint64(fi.Size())
}

func TestEnsureResumesAfterRestart(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 256 << 10
	data := randomBytes(6, 8<<20)
	digest := fake.add(data)
	client := dial(t, p, serve(t, p, fake))
	dir := t.TempDir()

	have := interrupt(t, newFetcher(t, dir, client, nil), digest, uint64(len(data)), 3<<20)
	if have < 3<<20 || have >= uint64(len(data)) {
		t.Fatalf("staging file has %d bytes after the interruption", have)
	}
	fake.idle(t) // a chunk the cancelled stream had under way counts as served before
	before := fake.served.Load()
	// A new fetcher on the same dir: only what is on disk carries over.
	path, err := newFetcher(t, dir, client, nil).Ensure(context.Background(), digest, uint64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, path), data) {
		t.Fatal("resumed file differs from the artifact")
	}
	if got, want := fake.served.Load()-before, int64(len(data))-int64(have); got != want {
		t.Errorf("the resumed download fetched %d bytes; %d were missing", got, want)
	}
}

func TestEnsureCompleteStagingFileIsVerifiedWithoutFetching(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(7, 1<<20)
	digest := fake.add(data)
	dir := t.TempDir()
	// A crash after the last byte was written, before the file was moved
	// into the cache.
	writeFile(t, filepath.Join(dir, "downloads", digest[len(sha256digest.Prefix):]+".partial"), data)
	path, err := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), nil).Ensure(context.Background(), digest, uint64(len(data)), nil)
	if err != nil || !bytes.Equal(readFile(t, path), data) {
		t.Fatalf("Ensure = %s, %v", path, err)
	}
	if fake.served.Load() != 0 {
		t.Errorf("fetched %d bytes of a complete staging file", fake.served.Load())
	}
}

func TestEnsureDetectsCorruptStagingFile(t *testing.T) {
	cases := []struct {
		name    string
		corrupt func(t *testing.T, path string, have int64)
	}{
		{"flipped byte", func(t *testing.T, path string, have int64) {
			b := readFile(t, path)
			b[have/2] ^= 0x40
			writeFile(t, path, b)
		}},
		{"longer than the artifact", func(t *testing.T, path string, have int64) {
			writeFile(t, path, randomBytes(99, 3<<20))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := pkitest.New(t)
			fake := newFake()
			data := randomBytes(8, 2<<20)
			digest := fake.add(data)
			client := dial(t, p, serve(t, p, fake))
			dir := t.TempDir()
			have := interrupt(t, newFetcher(t, dir, client, nil), digest, uint64(len(data)), 1<<20)
			tc.corrupt(t, filepath.Join(dir, "downloads", digest[len(sha256digest.Prefix):]+".partial"), int64(have))

			path, err := newFetcher(t, dir, client, nil).Ensure(context.Background(), digest, uint64(len(data)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, path), data) {
				t.Fatal("a corrupt staging file was exposed")
			}
		})
	}
}

func TestEnsureGivesUpWhenBytesNeverMatch(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(9, 500000)
	digest := digestOf(data)
	bad := bytes.Clone(data)
	bad[1234] ^= 1
	fake.serveAs(digest, bytes.NewReader(bad)) // a damaged copy on the controller
	dir := t.TempDir()
	f := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), func(c *Config) { c.Attempts = 3 })
	_, err := f.Ensure(context.Background(), digest, uint64(len(data)), nil)
	if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "downloaded 3 times") || !strings.Contains(err.Error(), digestOf(bad)) {
		t.Fatalf("err = %v, want a verification failure after 3 attempts naming the digest received", err)
	}
	if got := fake.served.Load(); got != 3*int64(len(data)) {
		t.Errorf("served %d bytes, want 3 full attempts (%d)", got, 3*len(data))
	}
	for _, sub := range []string{"cache", "downloads"} {
		if got := entries(t, filepath.Join(dir, sub)); len(got) != 0 {
			t.Errorf("%s holds %v after a failed verification", sub, got)
		}
	}
}

func TestEnsureControllerUnreachable(t *testing.T) {
	p := pkitest.New(t)
	f := newFetcher(t, t.TempDir(), dial(t, p, "127.0.0.1:1"), func(c *Config) { c.Retries = 3 })
	_, err := f.Ensure(context.Background(), digestOf([]byte("x")), 1, nil)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "4 attempts in a row failed") {
		t.Fatalf("err = %v, want ErrUnreachable after the retries", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	slow := newFetcher(t, t.TempDir(), dial(t, p, "127.0.0.1:1"), func(c *Config) { c.BackoffBase, c.BackoffMax = time.Second, time.Second })
	if _, err := slow.Ensure(ctx, digestOf([]byte("x")), 1, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the caller's deadline honoured while backing off", err)
	}
}

func TestEnsureConcurrentCallsDownloadOnce(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(10, 3<<20)
	digest := fake.add(data)
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), nil)
	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = f.Ensure(context.Background(), digest, uint64(len(data)), nil)
		}()
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil || paths[i] != paths[0] {
			t.Fatalf("call %d: %s, %v", i, paths[i], errs[i])
		}
	}
	if got := fake.served.Load(); got != int64(len(data)) {
		t.Errorf("served %d bytes for 4 concurrent calls, want one download (%d)", got, len(data))
	}
}

func TestCacheCollection(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	var digests []string
	for i := range 5 {
		digests = append(digests, fake.add(randomBytes(uint64(20+i), 1000*(i+1))))
	}
	client := dial(t, p, serve(t, p, fake))
	now := time.Now()
	tick := 0
	clock := func() time.Time { tick++; return now.Add(time.Duration(tick) * time.Minute) }

	t.Run("count limit keeps the most recently used", func(t *testing.T) {
		f := newFetcher(t, t.TempDir(), client, func(c *Config) { c.MaxCacheEntries = 2; c.Now = clock })
		ensure := func(d string) {
			if _, err := f.Ensure(context.Background(), d, 0, nil); err != nil {
				t.Fatal(err)
			}
		}
		ensure(digests[0])
		ensure(digests[1])
		ensure(digests[0]) // used again: now the most recent
		ensure(digests[2])
		for i, want := range []bool{true, false, true} {
			if _, ok := f.Path(digests[i]); ok != want {
				t.Errorf("artifact %d cached = %v, want %v", i, ok, want)
			}
		}
	})
	t.Run("held artifacts are never collected", func(t *testing.T) {
		f := newFetcher(t, t.TempDir(), client, func(c *Config) { c.MaxCacheEntries = 1; c.Now = clock })
		path, err := f.Ensure(context.Background(), digests[0], 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		release := f.Hold(digests[0])
		if _, err := f.Ensure(context.Background(), digests[1], 0, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("an artifact in use was collected: %v", err)
		}
		release()
		if _, err := f.Ensure(context.Background(), digests[2], 0, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err == nil {
			t.Error("a released artifact beyond the limit was kept")
		}
	})
	t.Run("size limit", func(t *testing.T) {
		f := newFetcher(t, t.TempDir(), client, func(c *Config) { c.MaxCacheEntries = -1; c.MaxCacheBytes = 9000; c.Now = clock })
		for _, d := range digests[1:] { // 2000 + 3000 + 4000 + 5000 bytes
			if _, err := f.Ensure(context.Background(), d, 0, nil); err != nil {
				t.Fatal(err)
			}
		}
		for i, want := range []bool{false, false, false, true, true} {
			if _, ok := f.Path(digests[i]); ok != want {
				t.Errorf("artifact %d cached = %v, want %v", i, ok, want)
			}
		}
	})
}

func TestStaleStagingFilesRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	stage := filepath.Join(dir, "downloads")
	old, fresh := filepath.Join(stage, "old.partial"), filepath.Join(stage, "fresh.partial")
	writeFile(t, old, []byte("x"))
	writeFile(t, fresh, []byte("x"))
	long := time.Now().Add(-8 * 24 * time.Hour)
	if err := os.Chtimes(old, long, long); err != nil {
		t.Fatal(err)
	}
	newFetcher(t, dir, dial(t, pkitest.New(t), "127.0.0.1:1"), nil)
	if _, err := os.Stat(old); err == nil {
		t.Error("a staging file untouched for 8 days was kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("a recent staging file was removed")
	}
}
