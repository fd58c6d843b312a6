package fetch

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/chunk"
	"github.com/ferrydeploy/ferry/shared/faultproxy"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// A link that resets after every 512 KiB never carries a whole 1 MiB
// chunk. The fetcher asks for smaller chunks until streams bring some,
// moves to a broken-link connection, keeps every chunk that arrived,
// and finishes; a link that is healthy again gets larger chunks back.
// Each broken stream still loses the chunk it was in and what gRPC had
// queued and in flight (the 64 KiB window and send queue here), and the
// first stream, on the default connection, loses its window's worth; the
// bound is 1.45× for this 16 MiB artifact (1.37–1.40× measured; this link
// has no rate cap, so the default connection's window grows less than on
// a queueing one: BenchmarkEnsureOverResettingLink has the figures for
// 100 MiB at 25 MiB/s).
func TestEnsureOverLinkResettingEvery512KiB(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(11, 16<<20)
	digest := fake.add(data)
	var healthy atomic.Bool
	faults := func(int) faultproxy.Faults {
		if healthy.Load() {
			return faultproxy.Faults{}
		}
		return faultproxy.Faults{ResetAfter: 512 << 10}
	}
	target := serve(t, p, fake)
	// The same link, one proxy per connection, to tell them apart.
	proxy := faultproxy.New(t, faultproxy.Config{Target: target, Faults: faults})
	brokenLink := faultproxy.New(t, faultproxy.Config{Target: target, Faults: faults})
	f := newFetcher(t, t.TempDir(), dial(t, p, proxy.Addr()), func(c *Config) {
		c.BrokenLink = brokenLinks(t, brokenLink.Addr(), dialOptions(p))
	})
	ensureWithin(t, f, 2*time.Minute, digest, data)
	fake.idle(t)
	ratio := float64(fake.served.Load()) / float64(len(data))
	t.Logf("%d streams over %d+%d connections; served %.2f× the artifact", fake.streams.Load(), proxy.Conns(), brokenLink.Conns(), ratio)
	// The first stream, asking for 1 MiB chunks, broke with none: every
	// later one went over a broken-link connection (64 KiB windows here).
	if proxy.Conns() != 1 || brokenLink.Conns() != fake.streams.Load()-1 {
		t.Errorf("%d streams went over %d default and %d broken-link connections, want 1 and the rest", fake.streams.Load(), proxy.Conns(), brokenLink.Conns())
	}
	if ratio > 1.45 {
		t.Errorf("served %d bytes for a %d-byte artifact (%.2f×), want at most 1.45×", fake.served.Load(), len(data), ratio)
	}
	fake.mu.Lock()
	asked := append([]uint32(nil), fake.asked...)
	fake.mu.Unlock()
	if asked[0] != chunk.Max || asked[len(asked)-1] != chunk.Min {
		t.Errorf("streams asked for chunks of %v, want from 1 MiB down to %d", asked, chunk.Min)
	}

	// Healthy again: a stream of growAfter chunks doubles the size for the
	// next, and so does one that completes the artifact after
	// shrinkBelow: 2 MiB in 32 KiB chunks, then in 64 KiB ones, then the
	// third asks for 128 KiB.
	healthy.Store(true)
	for i := range 3 {
		next := randomBytes(uint64(12+i), 2<<20)
		ensureWithin(t, f, time.Minute, fake.add(next), next)
	}
	fake.mu.Lock()
	got := fake.asked[len(fake.asked)-1]
	fake.mu.Unlock()
	if got != 4*chunk.Min {
		t.Errorf("after three long streams the last asked for %d-byte chunks, want %d", got, 4*chunk.Min)
	}
}

// A stream that stops bringing bytes is abandoned after StallTimeout and
// the download resumes on a fresh one, from where it was.
func TestEnsureResumesStalledStream(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 256 << 10
	data := randomBytes(13, 4<<20)
	digest := fake.add(data)
	var first atomic.Bool
	fake.hang = func() int64 {
		if first.CompareAndSwap(false, true) {
			return 1 << 20 // the first stream hangs after 1 MiB, for good
		}
		return -1
	}
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), func(c *Config) { c.StallTimeout = 200 * time.Millisecond })
	ensureWithin(t, f, 20*time.Second, digest, data) // the hang lasts longer
	fake.idle(t)
	if fake.streams.Load() != 2 || fake.served.Load() != int64(len(data)) {
		t.Errorf("%d streams served %d bytes, want 2 streams and each byte once (%d)", fake.streams.Load(), fake.served.Load(), len(data))
	}
}

// Before downloading, the fetcher checks the state dir's free space
// against what is still missing, and says both numbers.
func TestEnsureChecksFreeSpace(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	data := randomBytes(14, 300000)
	digest := fake.add(data)
	client := dial(t, p, serve(t, p, fake))
	cases := []struct {
		name    string
		size    uint64 // as the job says; 0 unknown
		partial int    // bytes already staged
		free    uint64
		msg     string // "" succeeds
		streams int64
	}{
		{"too little", uint64(len(data)), 0, 12897, "needs 293.0 KiB in %s, 12.6 KiB free; free space or move the state dir", 0},
		{"too little, size unknown", 0, 0, 12897, "needs 293.0 KiB in %s, 12.6 KiB free; free space or move the state dir", 1},
		{"too little for a fresh start, enough to resume", uint64(len(data)), 200000, 100000, "", 1},
		{"too little to resume", uint64(len(data)), 100000, 100000, "needs 195.3 KiB in %s, 97.7 KiB free", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newFetcher(t, dir, client, nil)
			f.free = func(string) (uint64, error) { return tc.free, nil }
			if tc.partial > 0 {
				writeFile(t, f.stagePath(digest[len(sha256digest.Prefix):]), data[:tc.partial])
			}
			streams := fake.streams.Load()
			_, err := f.Ensure(context.Background(), digest, tc.size, nil)
			if got := fake.streams.Load() - streams; got != tc.streams {
				t.Errorf("%d streams, want %d", got, tc.streams)
			}
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			want := strings.ReplaceAll(tc.msg, "%s", dir)
			if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), want) {
				t.Fatalf("err = %v, want ErrNoSpace saying %q", err, want)
			}
			staged := entries(t, filepath.Join(dir, "downloads"))
			if (tc.partial > 0) != (len(staged) == 1) {
				t.Errorf("staging holds %v; want the partial download kept, and no empty one", staged)
			}
		})
	}
}

// A state dir that fills up mid-download is not left full: the partial
// download is removed, unless there is room now for the rest of it.
func TestEnsureOutOfSpaceDropsPartial(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 256 << 10
	data := randomBytes(15, 2<<20)
	digest := fake.add(data)
	client := dial(t, p, serve(t, p, fake))
	for _, tc := range []struct {
		name     string
		freeThen uint64 // free space after the failed write
		kept     bool
		msg      string
	}{
		{"full", 4096, false, "filled up after 1.0 MiB of 2.0 MiB; the partial download was removed to free the space again; free 2.0 MiB there or move the state dir"},
		{"room again", 8 << 20, true, "filled up after 1.0 MiB of 2.0 MiB; 8.0 MiB are free now, so the partial download is kept to resume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newFetcher(t, dir, client, nil)
			var full atomic.Bool
			f.free = func(string) (uint64, error) {
				if full.Load() {
					return tc.freeThen, nil
				}
				return 1 << 30, nil
			}
			f.writeAt = func(file *os.File, b []byte, off int64) (int, error) {
				if off >= 1<<20 {
					full.Store(true)
					return 0, &os.PathError{Op: "write", Path: file.Name(), Err: syscall.ENOSPC}
				}
				return file.WriteAt(b, off)
			}
			_, err := f.Ensure(context.Background(), digest, uint64(len(data)), nil)
			if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want ErrNoSpace saying %q", err, tc.msg)
			}
			if staged := entries(t, filepath.Join(dir, "downloads")); (len(staged) == 1) != tc.kept {
				t.Errorf("staging holds %v, want the partial kept: %v", staged, tc.kept)
			}
		})
	}
}

// The same on a real, small file system (as root: a tmpfs): a download
// too large for it fails before it starts, one that fills it up leaves it
// as it found it, and an unrelated small download works afterwards.
func TestEnsureOnFullFileSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})

	p := pkitest.New(t)
	fake := newFake()
	fake.chunk = 256 << 10
	big, fits, small := randomBytes(16, 16<<20), randomBytes(17, 6<<20), randomBytes(18, 1<<20)
	digests := []string{fake.add(big), fake.add(fits), fake.add(small)}
	f := newFetcher(t, dir, dial(t, p, serve(t, p, fake)), nil)
	ctx := context.Background()

	_, err := f.Ensure(ctx, digests[0], uint64(len(big)), nil)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "needs 16.0 MiB in "+dir) {
		t.Fatalf("16 MiB into an 8 MiB state dir: %v, want the free-space check to refuse it", err)
	}

	// Something else fills the file system while the next one downloads.
	filled := false
	_, err = f.Ensure(ctx, digests[1], uint64(len(fits)), func(done, _ uint64) {
		if done > 0 && !filled {
			fill(t, filepath.Join(dir, "filler"))
			filled = true
		}
	})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "the partial download was removed") {
		t.Fatalf("a download filling the state dir: %v, want it failed with the partial removed", err)
	}
	if staged := entries(t, filepath.Join(dir, "downloads")); len(staged) != 0 {
		t.Errorf("staging holds %v after running out of space", staged)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Ensure(ctx, digests[2], uint64(len(small)), nil); err != nil {
		t.Errorf("an unrelated 1 MiB download after the full one: %v", err)
	}
}

// fill writes to path until its file system is full.
func fill(t *testing.T, path string) {
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := file.Write(buf); err != nil {
			return
		}
	}
}

func TestBrokenLinkWindow(t *testing.T) {
	for _, tc := range []struct {
		got  uint64
		want int32
	}{
		{0, MinBrokenLinkWindow},
		{480 << 10, 64 << 10},  // a 512 KiB-reset link: a quarter is 120 KiB
		{512 << 10, 128 << 10}, // a quarter is exactly 128 KiB
		{1440 << 10, 256 << 10},
		{64 << 20, MaxBrokenLinkWindow},
	} {
		if got := brokenLinkWindow(tc.got); got != tc.want {
			t.Errorf("brokenLinkWindow(%d) = %d, want %d", tc.got, got, tc.want)
		}
	}
}
