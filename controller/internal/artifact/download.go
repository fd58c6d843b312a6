package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/ferrydeploy/ferry/shared/chunk"
)

// DefaultMaxDownloads is how many downloads stream at once unless
// configured. A few streams already fill a link or a core with TLS; more
// only split the same bandwidth while costing file descriptors and memory.
const DefaultMaxDownloads = 8

// DefaultMaxDownloadsPerNode is how many of those one node may hold or
// wait for unless configured: an agent downloads one artifact per job, so
// two leave room for a plan beside an install, and a node that opens more
// cannot take the slots of the rest of the fleet.
const DefaultMaxDownloadsPerNode = 2

// DefaultStallTimeout is how long a download may go without a chunk being
// taken by the client before it gives its slot back: a client that stopped
// reading blocks the send, and the agent's download resumes later from its
// staging file.
const DefaultStallTimeout = 15 * time.Second

// Counter is the part of a Prometheus counter the downloader uses.
type Counter interface{ Add(float64) }

// DownloaderConfig configures a Downloader.
type DownloaderConfig struct {
	Store *Store
	// MaxConcurrent caps the downloads streaming at once; callers beyond
	// it wait (honouring their context) so a large rollout cannot starve
	// heartbeats and admin calls of CPU and bandwidth. Default
	// DefaultMaxDownloads.
	MaxConcurrent int
	// MaxPerNode caps the downloads one node streams or waits for at
	// once; one more is refused with ErrNodeBusy. Default
	// DefaultMaxDownloadsPerNode.
	MaxPerNode int
	// StallTimeout ends a download whose client has taken no chunk for
	// this long with ErrStalled, freeing its slot. Default
	// DefaultStallTimeout.
	StallTimeout time.Duration
	BytesServed  Counter // may be nil
	Logger       *slog.Logger
}

// Downloader streams artifact bytes to agents, a bounded number at once
// and a bounded number per node, and ends downloads that stall.
type Downloader struct {
	store  *Store
	slots  *slots
	served Counter
	log    *slog.Logger

	mu         sync.Mutex
	byNode     map[string]int // downloads streaming or waiting, per node
	maxPerNode int
	stall      time.Duration
}

// NewDownloader returns a downloader.
func NewDownloader(cfg DownloaderConfig) *Downloader {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Downloader{store: cfg.Store, slots: newSlots(0), served: cfg.BytesServed, log: cfg.Logger, byNode: map[string]int{}}
	d.SetLimits(cfg.MaxConcurrent, cfg.MaxPerNode, cfg.StallTimeout)
	return d
}

// SetLimits changes MaxConcurrent, MaxPerNode and StallTimeout (zero or
// less: their defaults) while downloads run: waiting downloads take new
// slots at once; a smaller limit lets running ones finish, and a new
// stall timeout applies to downloads that start from now on.
func (d *Downloader) SetLimits(maxConcurrent, maxPerNode int, stall time.Duration) {
	if maxConcurrent <= 0 {
		maxConcurrent = DefaultMaxDownloads
	}
	if maxPerNode <= 0 {
		maxPerNode = DefaultMaxDownloadsPerNode
	}
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	d.mu.Lock()
	d.maxPerNode, d.stall = maxPerNode, stall
	d.mu.Unlock()
	d.slots.setLimit(maxConcurrent)
}

// Limits returns MaxConcurrent, MaxPerNode and StallTimeout in force.
func (d *Downloader) Limits() (maxConcurrent, maxPerNode int, stall time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.slots.size(), d.maxPerNode, d.stall
}

// The pool's ChunkSize buffers must hold the largest chunk an agent may
// ask for (this does not compile otherwise).
const _ = uint(ChunkSize - chunk.Max)

// ErrPastEnd is matched (errors.Is) by Download's error for an offset
// beyond the artifact's size.
var ErrPastEnd = errors.New("past its end")

// ErrNodeBusy is matched by Download's error when the node already has
// MaxPerNode downloads streaming or waiting.
var ErrNodeBusy = errors.New("too many downloads from one node")

// ErrStalled is matched by Download's error when the client took no chunk
// for StallTimeout.
var ErrStalled = errors.New("download stalled")

// Chunk is one message of a download: Data at Offset in an artifact of
// Size bytes.
type Chunk struct {
	Offset, Size uint64
	Data         []byte // valid only until the send function returns
}

// Download streams the artifact with this digest ("sha256:<hex>") from
// offset, calling send with each piece in order, without waiting for the
// client between them (the caller's transport paces the stream). Pieces
// are maxChunk bytes, bounded by chunk.Size (0: ChunkSize), so an agent
// on a link that breaks often can ask for pieces it receives whole. A
// download from the artifact's end sends one chunk without data. A
// caller beyond MaxConcurrent waits for a slot while ctx lasts; one beyond
// node's MaxPerNode is refused, and a quarantined artifact (ErrDamaged)
// before anything is sent. An error send returns is returned
// unchanged. A send that has not returned after StallTimeout ends the
// download with ErrStalled while it is still running, on a goroutine of
// its own: the caller must then end the stream, which must make that send
// return.
func (d *Downloader) Download(ctx context.Context, node, digest string, off uint64, maxChunk uint32, send func(Chunk) error) error {
	return d.DownloadRange(ctx, node, digest, off, 0, maxChunk, send)
}

// DownloadRange is Download of length bytes from off (0: to the end), for
// an agent that fetches one piece from the controller (peer exchange). A
// range past the artifact's end is refused with ErrPastEnd before
// anything is sent.
func (d *Downloader) DownloadRange(ctx context.Context, node, digest string, off, length uint64, maxChunk uint32, send func(Chunk) error) error {
	form, err := d.store.LookupForm(digest)
	if err != nil {
		return err
	}
	if err := Quarantined(form.Rec); err != nil {
		return err
	}
	if off > form.Size {
		return fmt.Errorf("artifact %s has %d bytes; offset %d is %w: discard the partial download and start again", digest, form.Size, off, ErrPastEnd)
	}
	end := form.Size
	if length > 0 {
		if length > form.Size-off {
			return fmt.Errorf("artifact %s has %d bytes; %d bytes from offset %d go %w: ask for the piece ranges GetPieces gives", digest, form.Size, length, off, ErrPastEnd)
		}
		end = off + length
	}

	leave, err := d.enter(node)
	if err != nil {
		return err
	}
	defer leave()
	// Wait for a slot before opening anything: a queue of thousands of
	// agents holds no file descriptors.
	if err := d.slots.acquire(ctx); err != nil {
		return err
	}
	defer d.slots.release()
	// Bytes another controller holds are fetched first (replicas.go).
	if err := d.store.ensureLocal(ctx, form); err != nil {
		return err
	}
	blob, err := d.store.openForm(form)
	if err != nil {
		return err
	}
	defer func() { _ = blob.Close() }() // read-only

	d.mu.Lock()
	stall := d.stall
	d.mu.Unlock()
	guard := newStallGuard(stall, send, d.log.With("node", node, "artifact", digest))
	defer guard.stop()
	send = guard.send
	bufp := d.store.chunks.Get().(*[]byte)
	defer func() {
		if !guard.stalled { // else the stalled send may still read it
			d.store.chunks.Put(bufp)
		}
	}()
	buf := (*bufp)[:chunk.Size(maxChunk)] // the pool holds ChunkSize buffers, the largest chunk
	if off == blob.Size {
		return send(Chunk{Offset: off, Size: blob.Size})
	}
	for off < end {
		n, err := blob.ReadAt(buf[:min(uint64(len(buf)), end-off)], int64(off)) //nolint:gosec // off < blob.Size, which came from an int64 file size
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			d.log.Error("read artifact blob", "digest", digest, "offset", off, "err", err)
			return fmt.Errorf("read artifact %s at offset %d: %w", digest, off, err)
		}
		if err := send(Chunk{Offset: off, Size: blob.Size, Data: buf[:n]}); err != nil {
			return err
		}
		off += uint64(n) //nolint:gosec // ReadAt never returns a negative count
		if d.served != nil {
			d.served.Add(float64(n))
		}
	}
	return nil
}

// Active is how many downloads hold a slot now.
func (d *Downloader) Active() int { return d.slots.inUse() }

// enter counts a download of node against MaxPerNode, or refuses it.
func (d *Downloader) enter(node string) (leave func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byNode[node] >= d.maxPerNode {
		return nil, fmt.Errorf("%w: node %s already has %d downloads streaming or waiting, the most one node may have (--max-downloads-per-node); let one finish and try again", ErrNodeBusy, node, d.maxPerNode)
	}
	d.byNode[node]++
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.byNode[node]--; d.byNode[node] <= 0 {
			delete(d.byNode, node)
		}
	}, nil
}

// stallGuard makes a download's sends on a goroutine of its own and gives
// up on one that has not returned within the timeout: the client stopped
// reading and flow control holds the send. The download then ends, freeing
// its slots, and its caller ends the stream, which ends the send.
type stallGuard struct {
	timeout time.Duration
	next    func(Chunk) error
	chunks  chan Chunk
	done    chan error
	timer   *time.Timer
	log     *slog.Logger
	stalled bool // a send did not return in time; it may still be running
}

func newStallGuard(timeout time.Duration, send func(Chunk) error, log *slog.Logger) *stallGuard {
	g := &stallGuard{timeout: timeout, next: send, chunks: make(chan Chunk), done: make(chan error, 1), timer: time.NewTimer(timeout), log: log}
	g.timer.Stop()
	go func() {
		for c := range g.chunks {
			g.done <- g.next(c)
		}
	}()
	return g
}

// send has c sent and waits until it is, or for the timeout.
func (g *stallGuard) send(c Chunk) error {
	g.chunks <- c
	g.timer.Reset(g.timeout)
	defer g.timer.Stop()
	select {
	case err := <-g.done:
		return err
	case <-g.timer.C:
		g.stalled = true
		g.log.Warn("download stalled; ending it to free its slot", "offset", c.Offset, "after", g.timeout)
		return fmt.Errorf("%w: no progress for %s; resume later", ErrStalled, g.timeout)
	}
}

// stop lets the sending goroutine end once its send, if any, returns.
func (g *stallGuard) stop() { close(g.chunks) }
