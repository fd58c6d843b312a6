package fetch

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Serving pieces to peers (package exchange serves them). A download
// fetched in pieces is offered while it runs (the pieces verified so
// far, from the staging file) and, once verified and cached, for
// ServeFor afterwards, from the cache, for at most ServeBlobs downloads
// (the newest): the artifact cache may also have collected it earlier,
// and then its pieces are gone. An agent restart forgets what it offered:
// the piece digests come from the controller with each download.

// Serving bounds (Config.ServeFor, Config.ServeBlobs).
const (
	DefaultServeFor   = time.Hour
	DefaultServeBlobs = 2
)

// ErrNoPiece: this agent holds no verified copy of the piece and is not
// fetching it.
var ErrNoPiece = errors.New("no such piece here")

// servedBlob is a download whose verified pieces are offered.
type servedBlob struct {
	pieces   []pieceMeta
	have     []bool
	stage    string    // the staging file, while downloading
	final    string    // the cached file, once verified
	fetching bool      // a download is adding pieces
	doneAt   time.Time // when it was verified and cached (zero before)
	changed  chan struct{}
}

// serve offers a download's pieces (those marked in have) while it runs.
func (f *Fetcher) serve(digest string, pieces []pieceMeta, have []bool, stage, final string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[digest] = &servedBlob{pieces: pieces, have: append([]bool(nil), have...), stage: stage, final: final, fetching: true, changed: make(chan struct{})}
}

// served marks a piece verified and on disk.
func (f *Fetcher) served(digest string, index int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.blobs[digest]
	if b == nil || index >= len(b.have) {
		return
	}
	b.have[index] = true
	close(b.changed)
	b.changed = make(chan struct{})
}

// unserve stops offering a download (it failed, or was discarded).
func (f *Fetcher) unserve(digest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.blobs[digest]; b != nil {
		close(b.changed)
		delete(f.blobs, digest)
	}
}

// serveCached marks an offered download verified and cached, and keeps
// only the newest ServeBlobs of those.
func (f *Fetcher) serveCached(digest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.blobs[digest]
	if b == nil {
		return
	}
	for i := range b.have {
		b.have[i] = true
	}
	b.fetching, b.doneAt = false, f.cfg.Now()
	close(b.changed)
	b.changed = make(chan struct{})
	type done struct {
		digest string
		at     time.Time
	}
	var all []done
	for d, b := range f.blobs {
		if !b.doneAt.IsZero() {
			all = append(all, done{d, b.doneAt})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at.After(all[j].at) })
	for _, d := range all[min(len(all), f.cfg.ServeBlobs):] {
		close(f.blobs[d.digest].changed)
		delete(f.blobs, d.digest)
	}
}

// OpenPiece opens the verified piece index of digest for reading. A
// piece this agent is still fetching is waited for, up to wait; one it
// neither holds nor fetches is ErrNoPiece.
func (f *Fetcher) OpenPiece(ctx context.Context, digest string, index uint32, wait time.Duration) (io.ReadCloser, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		b := f.blobs[digest]
		if b != nil && !b.doneAt.IsZero() && f.cfg.Now().Sub(b.doneAt) > f.cfg.ServeFor {
			close(b.changed)
			delete(f.blobs, digest)
			b = nil
		}
		if b == nil || int(index) >= len(b.pieces) {
			f.mu.Unlock()
			return nil, ErrNoPiece
		}
		if b.have[index] {
			p, paths := b.pieces[index], []string{b.stage, b.final}
			if !b.doneAt.IsZero() {
				paths = []string{b.final}
			}
			f.mu.Unlock()
			return openPiece(paths, p)
		}
		fetching, changed := b.fetching, b.changed
		f.mu.Unlock()
		if !fetching {
			return nil, ErrNoPiece
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, ErrNoPiece
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pieceFile is a piece's bytes in an open file.
type pieceFile struct {
	*io.SectionReader
	file *os.File
}

func (p pieceFile) Close() error { return p.file.Close() }

// openPiece opens the first of paths that exists (the staging file may
// have moved into the cache meanwhile) at the piece.
func openPiece(paths []string, p pieceMeta) (io.ReadCloser, error) {
	var err error
	for _, path := range paths {
		var file *os.File
		file, err = os.Open(filepath.Clean(path))
		if err == nil {
			return pieceFile{io.NewSectionReader(file, fileOffset(p.off), int64(p.n)), file}, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoPiece
	}
	return nil, err
}
