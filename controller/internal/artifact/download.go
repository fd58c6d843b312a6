package artifact

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
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

// Downloader streams artifact bytes to agents. It implements
// server.Downloader.
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

// DownloadArtifact streams an artifact from the requested offset in
// ChunkSize messages, without waiting for the client between them (gRPC
// flow control paces the stream). The caller's identity was checked by
// the agent service.
func (d *Downloader) DownloadArtifact(req *ferryv1.DownloadArtifactRequest, stream grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error {
	ctx := stream.Context()
	rec, err := d.store.Lookup(req.GetDigest())
	if err != nil {
		return toStatus(err)
	}
	off := req.GetOffset()
	if off > rec.Size {
		return status.Errorf(codes.OutOfRange, "artifact %s has %d bytes; offset %d is past its end: discard the partial download and start again", req.GetDigest(), rec.Size, off)
	}

	// Wait for a slot before opening anything: a queue of thousands of
	// agents holds no file descriptors.
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	defer func() { <-d.sem }()
	blob, err := d.store.OpenBlob(rec)
	if err != nil {
		return toStatus(err)
	}
	defer blob.Close()

	bufp := d.store.chunks.Get().(*[]byte)
	defer d.store.chunks.Put(bufp)
	buf := *bufp
	// One message, reused: SendMsg marshals it (copying the data) before
	// it returns, and this server has no stats handler that keeps
	// messages, so the buffer may be refilled afterwards.
	msg := &ferryv1.DownloadArtifactResponse{Size: blob.Size}
	if off == blob.Size {
		msg.Offset = off
		return stream.Send(msg)
	}
	for off < blob.Size {
		n, err := blob.ReadAt(buf, int64(off))
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			d.log.Error("read artifact blob", "digest", req.GetDigest(), "offset", off, "err", err)
			return status.Errorf(codes.Internal, "read artifact %s at offset %d: %v", req.GetDigest(), off, err)
		}
		msg.Offset, msg.Data = off, buf[:n]
		if err := stream.Send(msg); err != nil {
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

// toStatus converts the store's errors to gRPC status errors.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrChecksumMismatch), errors.Is(err, ErrSizeMismatch), errors.Is(err, ErrAmbiguous):
		code = codes.InvalidArgument
	case errors.Is(err, ErrConflict):
		code = codes.AlreadyExists
	case errors.Is(err, ErrReferenced):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrDiskFull):
		code = codes.ResourceExhausted
	default:
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			// A receive error: keep its code (Canceled, DeadlineExceeded, ...).
			code = s.Code()
		} else if c := status.FromContextError(err).Code(); c == codes.Canceled || c == codes.DeadlineExceeded {
			code = c
		}
	}
	return status.Error(code, fmt.Sprint(err))
}
