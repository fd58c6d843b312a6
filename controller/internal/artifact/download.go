package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/ferrydeploy/ferry/shared/chunk"
)

// DefaultMaxDownloads is how many downloads stream at once unless
// configured. A few streams already fill a link or a core with TLS; more
// only split the same bandwidth while costing file descriptors and memory.
const DefaultMaxDownloads = 8

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
	BytesServed   Counter // may be nil
	Logger        *slog.Logger
}

// Downloader streams artifact bytes to agents, a bounded number at once.
type Downloader struct {
	store  *Store
	sem    chan struct{}
	served Counter
	log    *slog.Logger
}

// NewDownloader returns a downloader.
func NewDownloader(cfg DownloaderConfig) *Downloader {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxDownloads
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Downloader{store: cfg.Store, sem: make(chan struct{}, cfg.MaxConcurrent), served: cfg.BytesServed, log: cfg.Logger}
}

// The pool's ChunkSize buffers must hold the largest chunk an agent may
// ask for (this does not compile otherwise).
const _ = uint(ChunkSize - chunk.Max)

// ErrPastEnd is matched (errors.Is) by Download's error for an offset
// beyond the artifact's size.
var ErrPastEnd = errors.New("past its end")

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
// caller beyond MaxConcurrent waits for a slot while ctx lasts. An error
// send returns is returned unchanged.
func (d *Downloader) Download(ctx context.Context, digest string, off uint64, maxChunk uint32, send func(Chunk) error) error {
	rec, err := d.store.Lookup(digest)
	if err != nil {
		return err
	}
	if off > rec.Size {
		return fmt.Errorf("artifact %s has %d bytes; offset %d is %w: discard the partial download and start again", digest, rec.Size, off, ErrPastEnd)
	}

	// Wait for a slot before opening anything: a queue of thousands of
	// agents holds no file descriptors.
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-d.sem }()
	blob, err := d.store.OpenBlob(rec)
	if err != nil {
		return err
	}
	defer blob.Close()

	bufp := d.store.chunks.Get().(*[]byte)
	defer d.store.chunks.Put(bufp)
	buf := (*bufp)[:chunk.Size(maxChunk)] // the pool holds ChunkSize buffers, the largest chunk
	if off == blob.Size {
		return send(Chunk{Offset: off, Size: blob.Size})
	}
	for off < blob.Size {
		n, err := blob.ReadAt(buf, int64(off))
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
		off += uint64(n)
		if d.served != nil {
			d.served.Add(float64(n))
		}
	}
	return nil
}

// Active is how many downloads hold a slot now.
func (d *Downloader) Active() int { return len(d.sem) }
