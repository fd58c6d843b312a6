// Package fetch makes artifacts available on the node: it downloads an
// artifact from the controller into a staging file in the agent's state
// dir, resumes from the bytes already there after a dropped stream or an
// agent restart, verifies the SHA-256 of the whole file as it lies on disk
// before exposing it, and keeps verified artifacts in a cache by digest,
// collected by a size and count limit.
//
// Layout under the state dir:
//
//	downloads/<hex>.partial   bytes received so far (resumed by length)
//	cache/<hex>               verified artifacts, read-only
//
// The staging file is trusted for nothing but its length: every byte of it
// is hashed again from disk (by a reader trailing the writer, so hashing
// overlaps the transfer and a reconnect never re-reads what was hashed),
// and a file that does not match the digest is discarded and fetched again.
// A cached file was verified when it entered the cache (it is read-only
// from then on) and is not hashed again on every Ensure.
//
// Progress on a bad link: gRPC hands over whole messages only, so what a
// broken stream carried of its last chunk is lost, and so is what the
// controller had already handed to its transport: the message gRPC was
// writing, its send queue (64 KiB a stream) and what the HTTP/2 window let
// into the network. The chunk size asked for adapts to the link (see
// adapt): a stream that breaks within a few chunks halves it, down to
// chunk.Min; one that lasts doubles it again. While the link breaks
// streams (the chunk size is below chunk.Max) downloads use
// Config.BrokenLink, connections with static windows of about a quarter of
// what a stream brought before it broke (see brokenLinkWindow), so little
// is in flight when a stream breaks: gRPC's window estimate grows with the
// delay of a queueing link and would let a megabyte or more out per
// stream. A healthy link keeps the default, estimated window.
// Every chunk is written to the staging file as it arrives, a stream that
// brought bytes is resumed at once, and only streams that brought nothing
// count against the retry budget. A stream that brings nothing for
// StallTimeout is abandoned and resumed on a fresh one.
package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/backoff"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/chunk"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrNotFound: the controller has no artifact with this digest.
	ErrNotFound = errors.New("artifact not found on the controller")
	// ErrVerify: the bytes never matched the digest within the attempts.
	ErrVerify = errors.New("artifact failed verification")
	// ErrUnreachable: the stream kept failing without progress.
	ErrUnreachable = errors.New("controller unreachable")
	// ErrNoSpace: the state dir's file system has no room for the
	// artifact.
	ErrNoSpace = errors.New("no space for the artifact")
	// ErrDamaged: the controller's stored copy is damaged (quarantined);
	// it serves the artifact again once an admin pushes it again.
	ErrDamaged = errors.New("artifact damaged on the controller")
	// ErrRefused: the controller refused the download (the node may not
	// have the artifact, or its certificate is no longer accepted);
	// asking again would not help.
	ErrRefused = errors.New("the controller refused the download")
)

// syncEvery is how often, at most, a download over a link that breaks
// streams makes what arrived durable as its resume point.
const syncEvery = time.Second

// errStalled ends a stream that brought nothing for StallTimeout.
var errStalled = errors.New("download stalled")

// The chunk size adapts to the link by what each stream brought. A stream
// that broke within shrinkBelow chunks lost a large share of what the
// controller sent (the chunk it was in, and about one more queued behind
// it: some 1.5 chunks in shrinkBelow), so the next asks for half; one
// that brought growAfter chunks, or completed the artifact after
// shrinkBelow, asks for twice. Bounded by chunk.Min and chunk.Max.
const (
	shrinkBelow = 16
	growAfter   = 64
)

// The HTTP/2 stream and connection windows of the connections downloads
// use while the link breaks streams. A window bounds what a broken stream
// loses in flight, at the price of a throughput of at most one window per
// round trip on that link. The smallest is HTTP/2's initial window (grpc-go
// allows no less), where every connection starts before gRPC's estimate
// grows it.
const (
	MinBrokenLinkWindow = 64 << 10
	MaxBrokenLinkWindow = 1 << 20
)

// brokenLinkWindow is the window for a link whose last broken stream
// brought got bytes: the largest power of two up to a quarter of that,
// within [MinBrokenLinkWindow, MaxBrokenLinkWindow], so a few sizes serve
// every link and a stream loses at most about a quarter of what it brings
// in flight.
func brokenLinkWindow(got uint64) int32 {
	w := int32(MinBrokenLinkWindow)
	for w < MaxBrokenLinkWindow && uint64(w)*2 <= got/4 {
		w *= 2
	}
	return w
}

// BrokenLinkDialOptions are the options, added to the agent's own, of the
// connection Config.BrokenLink returns for window.
func BrokenLinkDialOptions(window int32) []grpc.DialOption {
	return []grpc.DialOption{grpc.WithStaticStreamWindowSize(window), grpc.WithStaticConnWindowSize(window)}
}

// Config configures a Fetcher.
type Config struct {
	// StateDir is the agent's state dir; downloads/ and cache/ are made
	// under it.
	StateDir string
	// Client is the agent's connection to the controller.
	Client ferryv1.AgentServiceClient
	// BrokenLink, if set, returns a connection to the controller dialled
	// with BrokenLinkDialOptions(window), one per window, which downloads
	// use while the link breaks streams (see the package doc); nil means
	// Client.
	BrokenLink func(window int32) ferryv1.AgentServiceClient
	// MaxCacheEntries caps how many verified artifacts are kept (the most
	// recently used win). 0 means 4; negative means no limit.
	MaxCacheEntries int
	// MaxCacheBytes caps their total size; 0 means no limit. An artifact
	// in use is never removed, even when that exceeds a limit.
	MaxCacheBytes int64
	// Attempts is how many times an artifact is downloaded before a
	// verification failure is final (default 3).
	Attempts int
	// Retries is how many consecutive stream failures without progress
	// are retried before the controller counts as unreachable (default 10).
	Retries int
	// BackoffBase and BackoffMax bound the jittered exponential delay
	// between reconnects after streams that brought nothing (defaults
	// 250ms and 15s); a stream that brought bytes is resumed at once.
	BackoffBase, BackoffMax time.Duration
	// StallTimeout abandons a stream that brought no bytes for this long
	// since its last chunk and resumes on a fresh one (default 15s). The
	// wait for a stream's first chunk is not timed: the controller queues
	// downloads beyond its limit, and a dead connection is found by the
	// connection's keepalive.
	StallTimeout time.Duration
	// StaleAfter removes staging files untouched for this long when the
	// fetcher starts (default 7 days).
	StaleAfter time.Duration
	// Peers, when set, turns peer exchange on: a download the controller
	// gives in pieces (GetPieces) is fetched from the agents holding them
	// (see pieces.go); nil downloads from the controller only.
	Peers PeerClient
	// ServeFor and ServeBlobs bound how long, and for how many downloads,
	// the pieces of a verified download stay offered to peers (defaults
	// DefaultServeFor and DefaultServeBlobs; see serve.go).
	ServeFor   time.Duration
	ServeBlobs int
	// PieceFetched, if set, counts the bytes of each verified piece by
	// where it came from ("peer" or "controller"); BadPiece, if set,
	// counts pieces a peer served with the wrong bytes.
	PieceFetched func(source string, bytes int)
	BadPiece     func()
	Logger       *slog.Logger
	Now          func() time.Time
	Rand         *rand.Rand // backoff jitter
}

// Fetcher downloads and caches artifacts. It is safe for concurrent use.
type Fetcher struct {
	cfg      Config
	log      *slog.Logger
	stageDir string
	cacheDir string

	mu    sync.Mutex
	locks map[string]chan struct{} // one download per digest at a time
	held  map[string]int           // digests in use: never collected
	blobs map[string]*servedBlob   // downloads whose pieces are offered (serve.go)
	// ctlPieces bounds the piece streams from the controller at once
	// (pieces.go): the controller refuses a node more than 2 downloads.
	ctlPieces chan struct{}
	rng       *rand.Rand
	chunk     int // chunk size to ask for, learnt from the link (see adapt)
	// window is the broken-link connection's window, learnt from what the
	// last broken stream brought (brokenLinkWindow).
	window int32

	// free and writeAt reach the file system; tests replace them.
	free    func(dir string) (uint64, error)
	writeAt func(file *os.File, b []byte, off int64) (int, error)
}

// New prepares the directories and removes stale staging files.
func New(cfg Config) (*Fetcher, error) {
	if cfg.StateDir == "" || cfg.Client == nil {
		return nil, errors.New("fetch: StateDir and Client are required")
	}
	if cfg.MaxCacheEntries == 0 {
		cfg.MaxCacheEntries = 4
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 10
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 250 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 15 * time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 15 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 7 * 24 * time.Hour
	}
	if cfg.ServeFor <= 0 {
		cfg.ServeFor = DefaultServeFor
	}
	if cfg.ServeBlobs <= 0 {
		cfg.ServeBlobs = DefaultServeBlobs
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rng := cfg.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x5eed)) //nolint:gosec // G404: retry jitter, not a secret.
	}
	f := &Fetcher{
		cfg: cfg, log: cfg.Logger, rng: rng,
		stageDir:  filepath.Join(cfg.StateDir, "downloads"),
		cacheDir:  filepath.Join(cfg.StateDir, "cache"),
		locks:     map[string]chan struct{}{},
		held:      map[string]int{},
		blobs:     map[string]*servedBlob{},
		ctlPieces: make(chan struct{}, controllerPieceStreams),
		chunk:     chunk.Max,
		window:    MinBrokenLinkWindow,
		free: func(dir string) (uint64, error) {
			free, _, err := facts.Space(dir)
			return free, err
		},
		writeAt: (*os.File).WriteAt,
	}
	for _, d := range []string{f.stageDir, f.cacheDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
	}
	f.removeStale()
	return f, nil
}

func (f *Fetcher) removeStale() {
	es, err := os.ReadDir(f.stageDir)
	if err != nil {
		return
	}
	for _, e := range es {
		fi, err := e.Info()
		if err != nil || f.cfg.Now().Sub(fi.ModTime()) < f.cfg.StaleAfter {
			continue
		}
		if os.Remove(filepath.Join(f.stageDir, e.Name())) == nil {
			f.log.Info("removed a stale partial download", "file", e.Name(), "modified", fi.ModTime())
		}
	}
}

// Path returns where a verified artifact is cached, and whether it is.
func (f *Fetcher) Path(digest string) (string, bool) {
	h, err := sha256digest.Parse(digest)
	if err != nil {
		return "", false
	}
	p := filepath.Join(f.cacheDir, h)
	_, err = os.Stat(p)
	return p, err == nil
}

// Hold marks a digest in use (an install reading it) so the cache never
// collects it; call release when done.
func (f *Fetcher) Hold(digest string) (release func()) {
	f.mu.Lock()
	f.held[digest]++
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			if f.held[digest]--; f.held[digest] <= 0 {
				delete(f.held, digest)
			}
			f.mu.Unlock()
		})
	}
}

// lock serialises work on one digest; it honours ctx while waiting.
func (f *Fetcher) lock(ctx context.Context, h string) (unlock func(), err error) {
	f.mu.Lock()
	ch, ok := f.locks[h]
	if !ok {
		ch = make(chan struct{}, 1)
		f.locks[h] = ch
	}
	f.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Ensure makes the artifact with this digest available locally and
// returns the path of the verified file. size is the expected size (0 if
// unknown). progress, if not nil, is called as bytes arrive with the bytes
// on disk and the total. A cached artifact is returned at once; otherwise
// it is downloaded, resuming a partial download, verified, and cached.
// Concurrent calls for one digest download it once.
func (f *Fetcher) Ensure(ctx context.Context, digest string, size uint64, progress func(done, total uint64)) (string, error) {
	h, err := sha256digest.Parse(digest)
	if err != nil {
		return "", fmt.Errorf("artifact %w", err)
	}
	release := f.Hold(digest)
	defer release()
	unlock, err := f.lock(ctx, h)
	if err != nil {
		return "", err
	}
	defer unlock()
	if progress == nil {
		progress = func(uint64, uint64) {}
	}

	final := filepath.Join(f.cacheDir, h)
	if fi, err := os.Stat(final); err == nil {
		if size == 0 || fileSize(fi) == size {
			// Recently used: collected last. A cache whose times cannot be
			// set still serves the file; it is only collected earlier.
			now := f.cfg.Now()
			_ = os.Chtimes(final, now, now)
			progress(fileSize(fi), fileSize(fi))
			return final, nil
		}
		f.log.Warn("cached artifact has the wrong size; fetching it again", "artifact", digest, "size", fi.Size(), "want", size)
		// install's rename replaces it should the removal fail.
		_ = os.Remove(final)
	}

	var lastGot string
	for attempt := 1; attempt <= f.cfg.Attempts; attempt++ {
		got, err := f.download(ctx, h, size, progress)
		if err != nil {
			return "", err
		}
		if got == h {
			if err := f.install(h); err != nil {
				f.unserve(digest)
				return "", err
			}
			f.serveCached(digest)
			f.collect()
			return final, nil
		}
		f.unserve(digest)
		lastGot = got
		f.log.Warn("downloaded artifact does not match its digest; discarding it and fetching again",
			"artifact", digest, "got", sha256digest.Prefix+got, "attempt", attempt, "of", f.cfg.Attempts)
		if err := os.Remove(f.stagePath(h)); err != nil {
			return "", fmt.Errorf("artifact %s: discard the download that did not match its digest: %w", digest, err)
		}
		if err := f.reportMismatch(ctx, digest, got); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%w: artifact %s: downloaded %d times and it never matched its digest (last got %s); the controller's copy may be damaged: check it with `ferryctl artifact verify %s` or push it again",
		ErrVerify, digest, f.cfg.Attempts, sha256digest.Prefix+lastGot, sha256digest.Short(digest))
}

func (f *Fetcher) stagePath(h string) string { return filepath.Join(f.stageDir, h+".partial") }

func (f *Fetcher) cachePath(h string) string { return filepath.Join(f.cacheDir, h) }

// install moves a verified staging file into the cache.
func (f *Fetcher) install(h string) error {
	final := filepath.Join(f.cacheDir, h)
	if err := os.Chmod(f.stagePath(h), 0o400); err != nil {
		return fmt.Errorf("artifact %s%s: %w", sha256digest.Prefix, h, err)
	}
	if err := os.Rename(f.stagePath(h), final); err != nil {
		return fmt.Errorf("artifact %s%s: move into the cache: %w", sha256digest.Prefix, h, err)
	}
	// The times order collection and the directory sync makes the rename
	// durable; the verified file is in the cache either way.
	now := f.cfg.Now()
	_ = os.Chtimes(final, now, now)
	_ = atomicfile.SyncDir(f.cacheDir)
	return nil
}

// Artifact sizes and offsets are uint64 on the wire and int64 in the
// os.File API. A file's size is never negative, and download refuses an
// artifact of more than math.MaxInt64 bytes, so both conversions are exact.

func fileSize(fi os.FileInfo) uint64 {
	return uint64(fi.Size()) //nolint:gosec // G115: a file's size is never negative.
}

func fileOffset(off uint64) int64 {
	return int64(off) //nolint:gosec // G115: download refuses sizes past math.MaxInt64.
}

// errTooLarge is the error for a size no file can hold.
func errTooLarge(digest string, size uint64) error {
	return fmt.Errorf("artifact %s: size %d is more than a file can hold; check it with `ferryctl artifact inspect` and push it again", digest, size)
}

// download brings the staging file to the artifact's full length and
// returns the SHA-256 (hex) of the file as read back from disk.
func (f *Fetcher) download(ctx context.Context, h string, size uint64, progress func(done, total uint64)) (string, error) {
	digest := sha256digest.Prefix + h
	if size > math.MaxInt64 {
		return "", errTooLarge(digest, size)
	}
	if f.cfg.Peers != nil {
		if sum, ok, err := f.downloadPieces(ctx, h, size, progress); ok || err != nil {
			return sum, err
		}
	}
	file, err := os.OpenFile(f.stagePath(h), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("artifact %s: open staging file: %w", digest, err)
	}
	// The writes that matter are made durable by file.Sync below.
	defer func() { _ = file.Close() }()
	fi, err := file.Stat()
	if err != nil {
		return "", fmt.Errorf("artifact %s: %w", digest, err)
	}
	off := fileSize(fi)
	if size > 0 && off > size {
		f.log.Warn("partial download is longer than the artifact; starting over", "artifact", digest, "have", off, "size", size)
		if err := file.Truncate(0); err != nil {
			return "", fmt.Errorf("artifact %s: %w", digest, err)
		}
		off = 0
	}
	if off > 0 {
		f.log.Info("resuming download", "artifact", digest, "offset", off, "size", size)
	}

	hasher := newTrailingHasher(file, fileOffset(off))
	defer func() { hasher.stop() }()
	total := size
	progress(off, total)
	if total > 0 {
		if err := f.checkRoom(digest, total-off); err != nil {
			if off == 0 {
				_ = os.Remove(f.stagePath(h)) // an empty file, tidied up
			}
			return "", err
		}
	}

	failures := 0
	synced, unsynced := f.cfg.Now(), false // resume points made durable
	syncStaged := func() error {
		if err := file.Sync(); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return f.noSpace(h, file, off, total, err)
			}
			return fmt.Errorf("artifact %s: sync staging file: %w", digest, err)
		}
		synced, unsynced = f.cfg.Now(), false
		return nil
	}
	for total == 0 || off < total {
		before := off
		err := f.stream(ctx, digest, file, &off, &total, hasher, progress)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if errors.Is(err, syscall.ENOSPC) {
			return "", f.noSpace(h, file, off, total, err)
		}
		switch status.Code(err) {
		case codes.NotFound:
			if off == 0 {
				_ = os.Remove(f.stagePath(h)) // an empty file, tidied up
			}
			return "", fmt.Errorf("%w: %s: %s", ErrNotFound, digest, status.Convert(err).Message())
		case codes.OutOfRange:
			// The staging file is longer than the artifact: it cannot be a
			// prefix of it. Start again from nothing.
			f.log.Warn("controller says the partial download is past the artifact's end; starting over", "artifact", digest, "offset", off)
			hasher.stop()
			if err := file.Truncate(0); err != nil {
				return "", fmt.Errorf("artifact %s: %w", digest, err)
			}
			off = 0
			hasher = newTrailingHasher(file, 0)
			continue
		case codes.FailedPrecondition:
			// The controller quarantined its copy; its message names the
			// artifact and the fix.
			return "", &damagedError{msg: status.Convert(err).Message()}
		}
		if refusal(err) {
			return "", refused(digest, err)
		}
		var fatal *backoff.PermanentError
		if errors.As(err, &fatal) {
			if errors.Is(fatal.Err, ErrNoSpace) && off == 0 {
				_ = os.Remove(f.stagePath(h)) // an empty file, tidied up
			}
			return "", fatal.Err
		}
		if off > before {
			// Bytes arrived: the controller is there and the link moves
			// data; go on at once. What arrived is made durable at most
			// every syncEvery (a link that breaks streams many times a
			// second would otherwise wait for the disk at each break), and
			// before any wait: a power loss costs at most that much of
			// the download, never its correctness (the digest is checked
			// on what is on disk).
			failures = 0
			unsynced = true
			if f.cfg.Now().Sub(synced) >= syncEvery {
				if err := syncStaged(); err != nil {
					return "", err
				}
			}
			f.log.Debug("artifact stream broke after bringing bytes; resuming", "artifact", digest, "offset", off, "size", total, "err", err)
			continue
		}
		if unsynced {
			if err := syncStaged(); err != nil {
				return "", err
			}
		}
		failures++
		if failures > f.cfg.Retries {
			return "", fmt.Errorf("%w: download artifact %s: %d attempts in a row failed without progress (%d of %d bytes on disk, kept for the next try); the last one: %s",
				ErrUnreachable, digest, failures, off, total, reason(err))
		}
		d := f.backoff(failures)
		f.log.Info("artifact stream broke; reconnecting", "artifact", digest, "offset", off, "size", total, "retry_in", d, "err", err)
		if err := sleep(ctx, d); err != nil {
			return "", err
		}
	}
	if off != total {
		return "", fmt.Errorf("artifact %s: stream ended at %d of %d bytes", digest, off, total)
	}
	if err := syncStaged(); err != nil {
		return "", err
	}
	sum, err := hasher.finish(ctx, fileOffset(total))
	if err != nil {
		return "", fmt.Errorf("artifact %s: verify: %w", digest, err)
	}
	return sum, nil
}

// checkRoom fails early when the state dir's file system has less free
// space than the need bytes still to download.
func (f *Fetcher) checkRoom(digest string, need uint64) error {
	free, err := f.free(f.stageDir)
	if err != nil || free >= need {
		return nil // when it cannot tell, the writes will
	}
	return fmt.Errorf("%w: artifact %s: needs %s in %s, %s free; free space or move the state dir",
		ErrNoSpace, digest, bytesize.IEC(need), f.cfg.StateDir, bytesize.IEC(free))
}

// noSpace handles a full state dir mid-download: the partial download is
// removed, so the file system is not left full for everything else,
// unless there is room now for the rest of the artifact.
func (f *Fetcher) noSpace(h string, file *os.File, off, total uint64, cause error) error {
	digest := sha256digest.Prefix + h
	free, ferr := f.free(f.stageDir)
	if ferr == nil && free >= total-off {
		return fmt.Errorf("%w: artifact %s: the state dir %s filled up after %s of %s; %s are free now, so the partial download is kept to resume: %w",
			ErrNoSpace, digest, f.cfg.StateDir, bytesize.IEC(off), bytesize.IEC(total), bytesize.IEC(free), cause)
	}
	if err := file.Truncate(0); err != nil {
		f.log.Warn("could not truncate the partial download", "artifact", digest, "err", err)
	}
	if err := os.Remove(f.stagePath(h)); err != nil {
		f.log.Warn("could not remove the partial download", "artifact", digest, "err", err)
	}
	f.log.Warn("state dir full; removed the partial download", "artifact", digest, "had", off, "size", total)
	return fmt.Errorf("%w: artifact %s: the state dir %s filled up after %s of %s; the partial download was removed to free the space again; free %s there or move the state dir",
		ErrNoSpace, digest, f.cfg.StateDir, bytesize.IEC(off), bytesize.IEC(total), bytesize.IEC(total))
}

// stream receives one DownloadArtifact stream into file from *off. It
// returns nil when the stream ended with the artifact complete.
func (f *Fetcher) stream(ctx context.Context, digest string, file *os.File, off, total *uint64, hasher *trailingHasher, progress func(done, total uint64)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.mu.Lock()
	size, window := f.chunk, f.window
	f.mu.Unlock()
	client := f.cfg.Client
	if size < chunk.Max && f.cfg.BrokenLink != nil {
		if c := f.cfg.BrokenLink(window); c != nil {
			client = c
		}
	}
	s, err := client.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest, Offset: *off, MaxChunkSize: uint32(size)}) //nolint:gosec // G115: adapt keeps size within chunk.Min..chunk.Max.
	if err != nil {
		return err
	}
	if _, err := s.Header(); err != nil {
		return err // the stream never opened: no bytes moved, nothing to learn
	}
	chunks, from := 0, *off
	defer func() {
		// A stall or the caller's end says nothing about the link's
		// breaks; only a stream that broke on its own does.
		complete := *total > 0 && *off == *total
		f.adapt(size, chunks, *off-from, !complete && ctx.Err() == nil, complete)
	}()
	var stall *time.Timer // armed by the first chunk, reset by each
	defer func() {
		if stall != nil {
			stall.Stop()
		}
	}()
	var msg ferryv1.DownloadArtifactResponse
	for {
		msg.Reset()
		if err := s.RecvMsg(&msg); err != nil {
			if errors.Is(context.Cause(ctx), errStalled) {
				return status.Errorf(codes.Unavailable, "no bytes for %v at %d of %d bytes; abandoned the stream", f.cfg.StallTimeout, *off, *total)
			}
			if errors.Is(err, io.EOF) {
				if *total > 0 && *off == *total {
					return nil
				}
				return status.Errorf(codes.Unavailable, "stream ended at %d of %d bytes", *off, *total)
			}
			return err
		}
		if stall == nil {
			stall = time.AfterFunc(f.cfg.StallTimeout, func() { cancel(errStalled) })
		} else {
			stall.Reset(f.cfg.StallTimeout)
		}
		if *total == 0 {
			if msg.Size > math.MaxInt64 {
				return backoff.Permanent(errTooLarge(digest, msg.Size))
			}
			*total = msg.Size
			if err := f.checkRoom(digest, *total-*off); err != nil {
				return backoff.Permanent(err)
			}
		} else if msg.Size != *total {
			return backoff.Permanent(fmt.Errorf("artifact %s: the controller says it has %d bytes, %d were expected; the package and the artifact disagree: apply the package again", digest, msg.Size, *total))
		}
		if msg.Offset != *off {
			return status.Errorf(codes.DataLoss, "chunk at offset %d, expected %d", msg.Offset, *off)
		}
		if *off+uint64(len(msg.Data)) > *total {
			return status.Errorf(codes.DataLoss, "chunk runs past the artifact's end (%d + %d > %d)", *off, len(msg.Data), *total)
		}
		if len(msg.Data) > 0 {
			if _, err := f.writeAt(file, msg.Data, fileOffset(*off)); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					return err // the caller decides what to keep
				}
				return backoff.Permanent(fmt.Errorf("artifact %s: write staging file: %w", digest, err))
			}
			*off += uint64(len(msg.Data))
			chunks++
			hasher.advance(fileOffset(*off))
		}
		progress(*off, *total)
		if *off == *total {
			return nil
		}
	}
}

// adapt learns the chunk size from a stream that asked for size and
// brought chunks of it (got bytes) before it ended: broke (on its own,
// before the artifact was complete) or complete; and the broken-link
// window from a stream that broke.
func (f *Fetcher) adapt(size, chunks int, got uint64, broke, complete bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if broke {
		f.window = brokenLinkWindow(got)
	}
	next := f.chunk
	switch {
	case chunks >= growAfter, complete && chunks >= shrinkBelow:
		next = min(size*2, chunk.Max)
	case broke && chunks < shrinkBelow:
		next = max(size/2, chunk.Min)
	}
	if next != f.chunk {
		f.log.Debug("download chunk size adapted to the link", "from", f.chunk, "to", next, "chunks", chunks, "broke", broke, "window", f.window)
		f.chunk = next
	}
}

// backoff is the wait after a failed attempt: the agent's reconnect rule
// (backoff.FullJitter), so a download retries like the stream does.
func (f *Fetcher) backoff(failures int) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return backoff.FullJitter(f.rng, f.cfg.BackoffBase, f.cfg.BackoffMax, failures-1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// collect removes the least recently used cached artifacts beyond the
// limits, never one in use.
func (f *Fetcher) collect() {
	es, err := os.ReadDir(f.cacheDir)
	if err != nil {
		f.log.Warn("list artifact cache", "err", err)
		return
	}
	type entry struct {
		name string
		size int64
		used time.Time
	}
	var all []entry
	for _, e := range es {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		all = append(all, entry{e.Name(), fi.Size(), fi.ModTime()})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.After(all[j].used) })
	f.mu.Lock()
	defer f.mu.Unlock()
	var count int
	var bytes int64
	for _, e := range all {
		over := (f.cfg.MaxCacheEntries > 0 && count+1 > f.cfg.MaxCacheEntries) ||
			(f.cfg.MaxCacheBytes > 0 && bytes+e.size > f.cfg.MaxCacheBytes)
		if over && f.held[sha256digest.Prefix+e.name] == 0 {
			if err := os.Remove(filepath.Join(f.cacheDir, e.name)); err != nil {
				f.log.Warn("remove cached artifact", "artifact", sha256digest.Prefix+e.name, "err", err)
				continue
			}
			f.log.Info("removed cached artifact (cache limit)", "artifact", sha256digest.Prefix+e.name, "size", e.size)
			continue
		}
		count++
		bytes += e.size
	}
}

// trailingHasher hashes a file from disk while it is being written,
// staying behind the writer: bytes already on disk when the download
// starts are read back as well, so the digest covers the file as stored.
type trailingHasher struct {
	file *os.File
	mu   sync.Mutex
	cond *sync.Cond
	// avail is how far the file is written, end its final length once
	// known (-1 before). hashed is how far it is hashed (run's own).
	avail, end int64
	hashed     int64
	stopped    bool
	done       chan struct{}
	sum        string
	err        error
}

func newTrailingHasher(file *os.File, avail int64) *trailingHasher {
	t := &trailingHasher{file: file, avail: avail, end: -1, done: make(chan struct{})}
	t.cond = sync.NewCond(&t.mu)
	go t.run()
	return t
}

// advance says the file is written up to n bytes.
func (t *trailingHasher) advance(n int64) {
	t.mu.Lock()
	if n > t.avail {
		t.avail = n
		t.cond.Signal()
	}
	t.mu.Unlock()
}

// stop ends the hasher (idempotent) and waits for it.
func (t *trailingHasher) stop() {
	t.mu.Lock()
	t.stopped = true
	t.cond.Signal()
	t.mu.Unlock()
	<-t.done
}

// finish says the file is complete at total bytes, waits until all of it
// is hashed and returns the hex digest.
func (t *trailingHasher) finish(ctx context.Context, total int64) (string, error) {
	t.mu.Lock()
	t.end = total
	t.avail = max(t.avail, total)
	t.cond.Signal()
	t.mu.Unlock()
	select {
	case <-t.done:
	case <-ctx.Done():
		t.stop()
		return "", ctx.Err()
	}
	return t.sum, t.err
}

func (t *trailingHasher) run() {
	defer close(t.done)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		t.mu.Lock()
		for t.hashed >= t.avail && !t.stopped && t.end < 0 {
			t.cond.Wait()
		}
		stopped, target, end := t.stopped, t.avail, t.end
		t.mu.Unlock()
		switch {
		case stopped:
			t.err = errors.New("hashing stopped")
			return
		case end >= 0 && t.hashed >= end:
			t.sum = hex.EncodeToString(h.Sum(nil))
			return
		}
		for t.hashed < target {
			n := int(min(int64(len(buf)), target-t.hashed))
			m, err := t.file.ReadAt(buf[:n], t.hashed)
			h.Write(buf[:m])
			t.hashed += int64(m)
			if m < n {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				t.err = fmt.Errorf("read back at offset %d: %w", t.hashed, err)
				return
			}
		}
	}
}
