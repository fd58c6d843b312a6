package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Extract while downloading. Stream runs Ensure on a goroutine of its own
// and lets readers follow the bytes as they reach the staging file (the
// way the trailing hasher does), so an archive is extracted while it
// arrives. Nothing read this way is trusted: the caller switches what it
// built in only once Wait returned the verified file, and only when
// Reader.Verified says every byte it read came from that very file. A
// download that starts over from fewer bytes (a mismatch discarded the
// file, or the controller said it is past the artifact's end) fails its
// readers at once; a dropped stream or a restart of the agent does not:
// the bytes stay, and a new Stream reads what is already there first.

// errRestarted fails a reader whose download started over.
var errRestarted = errors.New("the download started over from the beginning")

// Download is an artifact being downloaded by Stream.
type Download struct {
	stage string // the staging file readers follow

	mu    sync.Mutex
	cond  *sync.Cond
	avail uint64 // bytes on disk in the current generation
	gen   int    // bumped whenever the bytes on disk shrink (a restart)
	done  bool
	path  string // the verified file, once done without err
	err   error
}

// Stream starts downloading the artifact as Ensure does and returns at
// once; ctx bounds the download. progress is Ensure's.
func (f *Fetcher) Stream(ctx context.Context, digest string, size uint64, progress func(done, total uint64)) *Download {
	d := &Download{}
	d.cond = sync.NewCond(&d.mu)
	h, err := sha256digest.Parse(digest)
	if err != nil {
		d.finish("", fmt.Errorf("artifact %w", err))
		return d
	}
	d.stage = f.stagePath(h)
	go func() {
		path, err := f.Ensure(ctx, digest, size, func(done, total uint64) {
			d.advance(done)
			if progress != nil {
				progress(done, total)
			}
		})
		d.finish(path, err)
	}()
	return d
}

func (d *Download) advance(n uint64) {
	d.mu.Lock()
	if n < d.avail {
		d.gen++
	}
	d.avail = n
	d.cond.Broadcast()
	d.mu.Unlock()
}

func (d *Download) finish(path string, err error) {
	d.mu.Lock()
	d.done, d.path, d.err = true, path, err
	d.cond.Broadcast()
	d.mu.Unlock()
}

// Wait waits until the download is verified (or failed) and returns the
// verified file in the cache.
func (d *Download) Wait(ctx context.Context) (string, error) {
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	for !d.done && ctx.Err() == nil {
		d.cond.Wait()
	}
	if !d.done {
		return "", ctx.Err()
	}
	return d.path, d.err
}

// Reader returns a reader of the artifact from its first byte. Its reads
// wait for bytes not yet on disk; they fail when the download fails or
// starts over.
func (d *Download) Reader() *Reader { return &Reader{d: d} }

// Reader reads a Download as it arrives.
type Reader struct {
	d    *Download
	file *os.File
	gen  int
	off  uint64
	// fromFinal: opened on the verified file (the download was done, or
	// the artifact was in the cache).
	fromFinal bool
	// restarted: a read found the file replaced or shorter than reported;
	// what was read is not trusted.
	restarted bool
}

// open opens the staging file once bytes are on disk, or the verified file
// once the download is done.
func (r *Reader) open() error {
	d := r.d
	d.mu.Lock()
	for d.avail == 0 && !d.done {
		d.cond.Wait()
	}
	done, path, err, gen := d.done, d.path, d.err, d.gen
	d.mu.Unlock()
	if done {
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		r.file, r.gen, r.fromFinal = f, gen, true
		return nil
	}
	f, err := os.Open(d.stage)
	if errors.Is(err, os.ErrNotExist) {
		// Moved into the cache meanwhile (or discarded): follow the end.
		if _, err := d.Wait(context.Background()); err != nil {
			return err
		}
		return r.open()
	}
	if err != nil {
		return err
	}
	r.file, r.gen = f, gen
	return nil
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.file == nil {
		if err := r.open(); err != nil {
			return 0, err
		}
	}
	d := r.d
	d.mu.Lock()
	for r.off >= d.avail && !d.done && d.gen == r.gen {
		d.cond.Wait()
	}
	avail, done, derr, gen := d.avail, d.done, d.err, d.gen
	d.mu.Unlock()
	switch {
	case gen != r.gen:
		r.restarted = true
		return 0, errRestarted
	case done && derr != nil:
		return 0, derr
	case r.fromFinal || done:
		// The file is complete: read it to its end.
		n, err := r.file.ReadAt(p, fileOffset(r.off))
		r.off += uint64(n) //nolint:gosec // ReadAt never returns a negative count
		if errors.Is(err, io.EOF) && n > 0 {
			err = nil
		}
		return n, err
	}
	want := min(uint64(len(p)), avail-r.off)
	n, err := r.file.ReadAt(p[:want], fileOffset(r.off))
	r.off += uint64(n) //nolint:gosec // ReadAt never returns a negative count
	if n > 0 {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		// Fewer bytes than the download reported: the file was replaced
		// under the reader.
		r.restarted = true
		return 0, errRestarted
	}
	return 0, err
}

// Close closes the reader's file.
func (r *Reader) Close() error {
	if r.file == nil {
		return nil
	}
	return r.file.Close()
}

// Verified reports, once Wait returned, whether every byte read came from
// the verified file: the download neither failed nor started over since
// the reader opened it.
func (r *Reader) Verified() bool {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	return r.file != nil && !r.restarted && d.done && d.err == nil && d.gen == r.gen
}
