package artifact

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"

	"github.com/ferrydeploy/ferry/shared/ctxio"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Pieces of a download, for peer exchange (package tracker, the server's
// GetPieces): the bytes an agent downloads for a job (the zstd form when
// the job carries one, else the original) cut into pieces of PieceSize,
// each with its own SHA-256, so an agent can check every piece a peer
// sends before it uses or passes it on. They are computed on first use
// from the stored blob, in the same read that hashes the whole blob again:
// digests of a blob that no longer matches its own digest are never
// handed out. They are kept in memory (a few hundred bytes a MiB of
// artifact, MaxCachedPieces downloads at most), since a blob never
// changes under its digest; a restarted controller reads the blob once
// more.

// DefaultPieceSize is the size of a piece unless the download has more
// than MaxPieces of them.
const DefaultPieceSize = 4 << 20

// MaxPieces bounds the pieces of one download: a larger blob gets larger
// pieces (powers of two times DefaultPieceSize), so a GetPieces answer
// stays small.
const MaxPieces = 4096

// MaxCachedPieces is how many downloads' piece digests are kept in
// memory at once; the least recently used is dropped first.
const MaxCachedPieces = 64

// Pieces are the piece digests of one download.
type Pieces struct {
	Digest    string   // the download's digest
	Size      uint64   // bytes of the download
	PieceSize uint64   // bytes of every piece but the last
	Digests   []string // "sha256:<hex>" of each piece, in order
}

// Count is the number of pieces.
func (p *Pieces) Count() int { return len(p.Digests) }

// Range returns the offset and length of piece i.
func (p *Pieces) Range(i int) (offset, length uint64) {
	offset = uint64(i) * p.PieceSize //nolint:gosec // i is a piece index, never negative
	return offset, min(p.PieceSize, p.Size-offset)
}

// PieceSizeFor is the piece size of a download of size bytes.
func PieceSizeFor(size uint64) uint64 {
	ps := uint64(DefaultPieceSize)
	for size > ps*MaxPieces {
		ps *= 2
	}
	return ps
}

type pieceCache struct {
	mu      sync.Mutex
	entries map[string]*pieceEntry
	tick    uint64 // last use counter, for eviction
}

type pieceEntry struct {
	done chan struct{} // closed once p or err is set
	p    *Pieces
	err  error
	used uint64
}

func newPieceCache() *pieceCache { return &pieceCache{entries: map[string]*pieceEntry{}} }

// Pieces returns the piece digests of the stored form with this digest
// (an original or a zstd form), computing them on first use. A blob whose
// bytes no longer hash to its digest is refused with ErrDamaged (`ferryctl
// artifact verify` quarantines it); a quarantined one likewise.
func (s *Store) Pieces(ctx context.Context, digest string) (*Pieces, error) {
	form, err := s.LookupForm(digest)
	if err != nil {
		return nil, err
	}
	if err := Quarantined(form.Rec); err != nil {
		return nil, err
	}
	c := s.pieces
	c.mu.Lock()
	c.tick++
	e, ok := c.entries[form.Digest]
	if !ok {
		e = &pieceEntry{done: make(chan struct{})}
		c.entries[form.Digest] = e
		c.evictLocked()
	}
	e.used = c.tick
	c.mu.Unlock()
	if !ok {
		// Computed on a context of its own: every caller waiting for it
		// wants it, whichever asked first.
		go func() {
			e.p, e.err = s.computePieces(context.WithoutCancel(ctx), form)
			if e.err != nil {
				c.mu.Lock()
				if c.entries[form.Digest] == e {
					delete(c.entries, form.Digest) // the next caller tries again
				}
				c.mu.Unlock()
			}
			close(e.done)
		}()
	}
	select {
	case <-e.done:
		return e.p, e.err
	case <-ctx.Done():
		return nil, fmt.Errorf("the piece digests of %s are still being computed (the controller reads the blob once for them); ask again shortly: %w", formLabel(form), ctx.Err())
	}
}

// evictLocked drops the least recently used computed entries beyond
// MaxCachedPieces.
func (c *pieceCache) evictLocked() {
	for len(c.entries) > MaxCachedPieces {
		var oldest string
		var at uint64
		for d, e := range c.entries {
			select {
			case <-e.done:
			default:
				continue // still being computed
			}
			if oldest == "" || e.used < at {
				oldest, at = d, e.used
			}
		}
		if oldest == "" {
			return
		}
		delete(c.entries, oldest)
	}
}

// computePieces reads form's blob once, hashing each piece and the whole.
func (s *Store) computePieces(ctx context.Context, form Form) (*Pieces, error) {
	if err := s.ensureLocal(ctx, form); err != nil {
		return nil, err
	}
	blob, err := s.openForm(form)
	if err != nil {
		return nil, err
	}
	defer func() { _ = blob.Close() }() // read-only
	select {
	case s.checks.sem <- struct{}{}: // bounded with the other hashing
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.checks.sem }()
	p := &Pieces{Digest: form.Digest, Size: form.Size, PieceSize: PieceSizeFor(form.Size)}
	whole := sha256.New()
	piece := sha256.New()
	bufp := s.chunks.Get().(*[]byte)
	defer s.chunks.Put(bufp)
	r := ctxio.NewReader(ctx, blob)
	for off := uint64(0); off < form.Size; off += p.PieceSize {
		n := min(p.PieceSize, form.Size-off)
		piece.Reset()
		if _, err := io.CopyBuffer(io.MultiWriter(whole, piece), io.LimitReader(r, int64(n)), *bufp); err != nil { //nolint:gosec // n is at most a piece size
			return nil, fmt.Errorf("read %s to compute its piece digests: %w", formLabel(form), err)
		}
		p.Digests = append(p.Digests, sha256digest.Format(piece.Sum(nil)))
	}
	if got := sha256digest.Format(whole.Sum(nil)); got != form.Digest {
		s.log.Error("stored blob does not match its digest; its piece digests are not handed out", "artifact", formLabel(form), "digest", form.Digest, "got", got)
		return nil, fmt.Errorf("%w: %s: the stored bytes hash to %s; run `ferryctl artifact verify %s` to quarantine it, then push the file again", ErrDamaged, formLabel(form), got, Key(form.Rec))
	}
	if len(p.Digests) == 0 {
		return nil, fmt.Errorf("%w: %s is empty: it has no pieces to exchange; download it from the controller", ErrInvalid, formLabel(form))
	}
	return p, nil
}
