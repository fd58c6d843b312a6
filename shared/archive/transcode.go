package archive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// CodecZstd names Transcode's output (a FormatTarZst archive) on the
// wire: the codec agents advertise in their hello and a job's artifact
// encoding carries.
const CodecZstd = "zstd"

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// The codec settings, chosen by BenchmarkZstdToolchain on the Go toolchain
// (docs/benchmarks.md has the figures).
//
// Encoding happens once per artifact on the controller: SpeedDefault (zstd
// level 3) with two goroutines keeps a push of the toolchain within about a
// second of extra work while compressing some 30% better than gzip -1.
//
// Decoding happens on every node, often many extractions at once on one
// machine: one synchronous goroutine (no read-ahead pool) is the cheapest
// per byte, and the tar reader above it reads in large blocks through a
// bufio.Reader, so the decoder is never fed small reads. The frames'
// xxhash checksums are not checked (some 5% of the decoding): what is
// extracted is switched in only once the whole file's SHA-256 matched,
// which a checksum could only confirm.
const (
	zstdLevel           = zstd.SpeedDefault
	zstdEncoderRoutines = 2
	zstdDecoderRoutines = 1
	// zstdWindow bounds the decoder's window (and memory): the encoder's
	// level never uses more, and a hostile frame asking for more is refused.
	zstdWindow = 8 << 20
)

func newZstdReader(r io.Reader) (*zstd.Decoder, error) {
	return zstd.NewReader(bufio.NewReaderSize(r, 1<<20),
		zstd.WithDecoderConcurrency(zstdDecoderRoutines),
		zstd.WithDecoderMaxWindow(zstdWindow),
		zstd.WithDecoderLowmem(false),
		zstd.IgnoreChecksum(true))
}

func newZstdWriter(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstdLevel),
		zstd.WithEncoderConcurrency(min(zstdEncoderRoutines, runtime.GOMAXPROCS(0))),
		zstd.WithWindowSize(zstdWindow))
}

// ErrNotTranscodable: the file is not a tar or tar.gz (a zip, or not an
// archive at all); it is served as it is.
var ErrNotTranscodable = errors.New("not a tar or tar.gz archive")

// ErrTooLargeToTranscode: the archive expands past the limits the
// transcoder checks with; it is served as it is, and the agent's step
// limits decide.
var ErrTooLargeToTranscode = errors.New("archive too large to transcode")

// TranscodeLimits bound what Transcode reads, so a compression bomb costs
// the controller bounded work: four times the agent's default step limits.
const (
	TranscodeMaxBytes   = 16 << 30
	TranscodeMaxEntries = 800000
)

// Transcode writes the tar stream of the tar or tar.gz archive src,
// unchanged, zstd-compressed to dst, and checks every entry on the way
// with the extractor's rules (a dry run without strip_components): an
// archive the extractor would refuse is refused here, wrapping ErrUnsafe.
// name is what errors call the archive. A file that is no tar or tar.gz
// returns ErrNotTranscodable, one past the transcode limits
// ErrTooLargeToTranscode; dst then holds nothing usable.
//
// A file with a tarball's name (.tar, .tar.gz, .tgz) whose first entry
// cannot be read is refused; one with another name is not a tarball
// (ErrNotTranscodable), since a gzip-compressed file need not hold a tar.
func Transcode(ctx context.Context, src io.Reader, name string, dst io.Writer) (Result, error) {
	br := bufio.NewReaderSize(src, 1<<20)
	head, _ := br.Peek(512) // a shorter file shows its first bytes all the same
	format, err := detect(head)
	if err != nil || (format != FormatTar && format != FormatTarGz) {
		return Result{}, ErrNotTranscodable
	}
	var r io.Reader = br
	if format == FormatTarGz {
		zr, err := pgzip.NewReaderN(r, 1<<20, 4)
		if err != nil {
			if !tarballName(name) {
				return Result{}, ErrNotTranscodable
			}
			return Result{}, fmt.Errorf("transcode %s: %w: not gzip: %w", name, ErrUnsafe, err)
		}
		defer func() { _ = zr.Close() }() // the stream is read to its end below, where gzip checks its CRC
		r = zr
	}
	enc, err := newZstdWriter(dst)
	if err != nil {
		return Result{}, fmt.Errorf("transcode %s: %w", name, err)
	}
	x := &extractor{ctx: ctx, opts: Options{MaxBytes: TranscodeMaxBytes, MaxEntries: TranscodeMaxEntries, DryRun: true},
		seen: map[string]kind{}, links: map[string]string{}, buf: make([]byte, 256<<10)}
	in := &countingReader{r: io.TeeReader(r, enc)}
	res, err := x.run(name, FormatTarZst, func() error {
		if err := x.tar(in); err != nil {
			return err
		}
		// What follows the tar's end (padding to a record) is part of the
		// stream, and reading to the end is where gzip checks its CRC.
		if _, err := io.Copy(io.Discard, in); err != nil {
			return fmt.Errorf("%w: read past the tar's end: %w", ErrUnsafe, err)
		}
		return nil
	})
	if cerr := enc.Close(); err == nil && cerr != nil {
		return Result{}, fmt.Errorf("transcode %s: %w", name, cerr)
	}
	switch {
	case err == nil:
		return res, nil
	case in.headerOnly() && !tarballName(name):
		return Result{}, ErrNotTranscodable
	case errors.As(err, new(*limitError)):
		return Result{}, fmt.Errorf("%w: %w", ErrTooLargeToTranscode, err)
	case !errors.Is(err, ErrUnsafe) && ctx.Err() == nil:
		// A read error inside an entry: the stream itself is damaged.
		return Result{}, fmt.Errorf("%w: damaged: %w", ErrUnsafe, err)
	}
	return Result{}, err
}

func tarballName(name string) bool {
	for _, s := range []string{".tar", ".tar.gz", ".tgz"} {
		if strings.HasSuffix(strings.ToLower(name), s) {
			return true
		}
	}
	return false
}

// countingReader counts what the tar reader read, to tell a file that is
// no tar at all (it failed within the first header) from a damaged one.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) headerOnly() bool { return c.n <= 512 }
