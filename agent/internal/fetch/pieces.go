package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/backoff"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/chunk"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Peer exchange. When Config.Peers is set and the controller gives the
// download's piece digests (GetPieces), the download is fetched piece by
// piece, a few ahead of the first missing one (pieceWindow), each from an
// agent that holds it (package exchange) or, when the controller asks
// this agent to seed it or no agent can give it, from the controller
// (DownloadArtifact with an offset and a length). Every piece is checked
// against its digest before it is written to the staging file, and so
// before it is read by an extraction or served to another agent; the
// whole file is still hashed from disk (the trailing hasher, on the
// contiguous prefix) and checked against the download's digest before
// anything is installed.
//
// A peer whose bytes do not match is dropped for the rest of the
// download, reported to the controller (ReportBadPeer) and named in the
// job's log (WithNote); one that refuses, fails or sends nothing for
// exchange's stall time is left for the next holder, finally the
// controller; one that answers NOT_FOUND (a seeder still fetching the
// piece) or is busy is asked again after the next GetPieces answer. A
// piece nobody holds yet is waited for (GetPieces is asked again every
// pollFast, with the pieces this agent has) while other pieces arrive,
// and fetched from the controller once the download had no piece for
// noHolderWait, so a download never stalls on the peers.
//
// A controller without GetPieces (Unimplemented) or with peer exchange
// off (FailedPrecondition), or any table that does not fit the download,
// means the download goes as without peers. On a restart the staging
// file's pieces that match their digests are kept; a download that leaves
// the piece path for the controller's stream keeps the contiguous prefix.

// Peer exchange's pacing and bounds.
const (
	pieceWindow = 4
	// controllerPieceStreams is how many pieces are fetched from the
	// controller at once: its default --max-downloads-per-node.
	controllerPieceStreams = 2
	pollFast               = 250 * time.Millisecond
	pollSlow               = 2 * time.Second
	noHolderWait           = 15 * time.Second
	getPiecesTimeout       = 10 * time.Second
	reportPeerTimeout      = 10 * time.Second
	// maxPieceLen and maxPieceCount bound a table from the controller
	// (it uses 4 MiB pieces, at most 4096 of them).
	maxPieceLen   = 64 << 20
	maxPieceCount = 1 << 16
)

// PeerClient fetches a piece from another agent (exchange.Client).
type PeerClient interface {
	FetchPiece(ctx context.Context, node, addr, digest string, index, length uint32) ([]byte, error)
}

type noteKey struct{}

// WithNote returns ctx carrying note, which writes a line to the job's
// log: a download names there the peers that served bad bytes and where
// its pieces came from.
func WithNote(ctx context.Context, note func(string)) context.Context {
	return context.WithValue(ctx, noteKey{}, note)
}

func noteFrom(ctx context.Context) func(string) {
	if n, ok := ctx.Value(noteKey{}).(func(string)); ok && n != nil {
		return n
	}
	return func(string) {}
}

// pieceMeta is one piece of a download's table.
type pieceMeta struct {
	off uint64
	n   uint32
	sum [sha256.Size]byte
}

// errLeavePieces ends the piece path; the download goes on from the
// controller's stream.
var errLeavePieces = errors.New("leaving peer exchange for this download")

// parseTable checks the controller's table against the download: pieces
// in order, each of 1..maxPieceLen bytes, covering size exactly.
func parseTable(resp *ferryv1.GetPiecesResponse, size uint64) ([]pieceMeta, error) {
	if size > 0 && resp.GetSize() != size {
		return nil, fmt.Errorf("the controller says the download has %d bytes, the job %d", resp.GetSize(), size)
	}
	if resp.GetSize() == 0 || resp.GetSize() > math.MaxInt64 {
		return nil, fmt.Errorf("a download of %d bytes", resp.GetSize())
	}
	ps := resp.GetPieces()
	if len(ps) == 0 || len(ps) > maxPieceCount {
		return nil, fmt.Errorf("%d pieces", len(ps))
	}
	table := make([]pieceMeta, len(ps))
	var off uint64
	for i, p := range ps {
		if p.GetOffset() != off || p.GetLength() == 0 || p.GetLength() > maxPieceLen {
			return nil, fmt.Errorf("piece %d at %d of %d bytes, expected at %d", i, p.GetOffset(), p.GetLength(), off)
		}
		h, err := sha256digest.Parse(p.GetDigest())
		if err != nil {
			return nil, fmt.Errorf("piece %d: %w", i, err)
		}
		raw, _ := hex.DecodeString(h)
		copy(table[i].sum[:], raw)
		table[i].off, table[i].n = off, p.GetLength()
		off += uint64(p.GetLength())
	}
	if off != resp.GetSize() {
		return nil, fmt.Errorf("pieces cover %d of %d bytes", off, resp.GetSize())
	}
	return table, nil
}

// getPieces asks the controller for the table and holders.
func (f *Fetcher) getPieces(ctx context.Context, digest string, have []uint32) (*ferryv1.GetPiecesResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, getPiecesTimeout)
	defer cancel()
	return f.cfg.Client.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: digest, Have: have})
}

// pieceDownload is one download fetched in pieces.
type pieceDownload struct {
	f        *Fetcher
	digest   string
	file     *os.File
	table    []pieceMeta
	total    uint64
	hasher   *trailingHasher
	progress func(done, total uint64)
	note     func(string)

	// mu guards what follows; it is taken before f.mu, never after.
	mu        chan struct{} // a one-slot lock
	have      []bool
	busy      []bool
	prefix    int // pieces 0..prefix-1 are all held
	holders   [][]string
	seed      []bool
	addrs     map[string]string
	dropped   map[string]bool // peers that served bad bytes
	noPeers   bool            // the controller turned peer exchange off meanwhile
	updated   chan struct{}   // closed and replaced on every GetPieces answer
	lastPiece time.Time       // when the last piece arrived
	announce  chan struct{}   // a piece arrived: tell the controller soon
	assigned  chan struct{}   // a GetPieces answer came: run may start seeds

	// Where the bytes came from, for the job's log.
	bytesPeers, bytesController uint64
	peersUsed                   map[string]bool

	// progMu orders progress calls: the prefix reported only grows (a
	// Download takes a smaller one for a restart).
	progMu   chan struct{}
	reported uint64
}

func (d *pieceDownload) lock()   { d.mu <- struct{}{} }
func (d *pieceDownload) unlock() { <-d.mu }

// downloadPieces is download through peer exchange. ok is false when the
// piece path does not apply (or left the download to the controller's
// stream, keeping the staging file's contiguous prefix): download goes on
// as without peers.
func (f *Fetcher) downloadPieces(ctx context.Context, h string, size uint64, progress func(done, total uint64)) (sum string, ok bool, err error) {
	digest := sha256digest.Prefix + h
	resp, err := f.getPieces(ctx, digest, nil)
	switch {
	case ctx.Err() != nil:
		return "", false, ctx.Err()
	case status.Code(err) == codes.Unimplemented:
		f.log.Debug("the controller has no peer exchange (an older version); downloading from it", "artifact", digest)
		return "", false, nil
	case status.Code(err) == codes.FailedPrecondition:
		f.log.Debug("peer exchange is off on the controller; downloading from it", "artifact", digest, "controller", reason(err))
		return "", false, nil
	case err != nil:
		f.log.Info("the controller gave no pieces of the download; downloading it whole", "artifact", digest, "err", reason(err))
		return "", false, nil
	}
	table, err := parseTable(resp, size)
	if err != nil {
		f.log.Warn("the controller's piece table does not fit the download; downloading it whole", "artifact", digest, "err", err)
		return "", false, nil
	}
	total := resp.GetSize()
	file, err := os.OpenFile(f.stagePath(h), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", true, fmt.Errorf("artifact %s: open staging file: %w", digest, err)
	}
	defer func() { _ = file.Close() }()
	d := &pieceDownload{f: f, digest: digest, file: file, table: table, total: total, progress: progress, note: noteFrom(ctx),
		mu: make(chan struct{}, 1), have: make([]bool, len(table)), busy: make([]bool, len(table)),
		holders: make([][]string, len(table)), seed: make([]bool, len(table)), addrs: map[string]string{},
		dropped: map[string]bool{}, updated: make(chan struct{}), announce: make(chan struct{}, 1), assigned: make(chan struct{}, 1), peersUsed: map[string]bool{}, progMu: make(chan struct{}, 1)}
	kept, err := d.resume()
	if err != nil {
		return "", true, err
	}
	if kept > 0 {
		f.log.Info("resuming download: kept the verified pieces of the partial download", "artifact", digest, "bytes", kept, "size", total)
		// Told what is here, the controller neither assigns those pieces
		// to this agent nor hides it as their holder.
		if again, err := f.getPieces(ctx, digest, d.haveList()); err == nil && len(again.GetPieces()) == len(table) {
			resp = again
		}
	}
	d.update(resp)
	if err := f.checkRoom(digest, total-kept); err != nil {
		return "", true, err
	}
	f.serve(digest, table, d.have, f.stagePath(h), f.cachePath(h))
	complete := false
	defer func() {
		if !complete {
			f.unserve(digest)
			d.keepPrefix()
		}
	}()
	d.hasher = newTrailingHasher(file, fileOffset(d.prefixBytes()))
	defer func() { d.hasher.stop() }()
	d.reported = d.prefixBytes()
	progress(d.reported, total)

	if err := d.run(ctx); err != nil {
		if errors.Is(err, errLeavePieces) {
			return "", false, nil
		}
		return "", true, err
	}
	if err := file.Sync(); err != nil {
		return "", true, fmt.Errorf("artifact %s: sync staging file: %w", digest, err)
	}
	sum, err = d.hasher.finish(ctx, fileOffset(total))
	if err != nil {
		return "", true, fmt.Errorf("artifact %s: verify: %w", digest, err)
	}
	complete = true
	d.logSources()
	return sum, true, nil
}

// resume keeps the staging file's pieces that match their digests and
// returns how many bytes they hold.
func (d *pieceDownload) resume() (uint64, error) {
	fi, err := d.file.Stat()
	if err != nil {
		return 0, fmt.Errorf("artifact %s: %w", d.digest, err)
	}
	length := fileSize(fi)
	if length > d.total {
		if err := d.file.Truncate(fileOffset(d.total)); err != nil {
			return 0, fmt.Errorf("artifact %s: %w", d.digest, err)
		}
		length = d.total
	}
	var kept uint64
	buf := make([]byte, 0, 4<<20)
	for i, p := range d.table {
		if p.off+uint64(p.n) > length {
			break
		}
		if cap(buf) < int(p.n) {
			buf = make([]byte, 0, p.n)
		}
		b := buf[:p.n]
		if _, err := d.file.ReadAt(b, fileOffset(p.off)); err != nil {
			break
		}
		if sha256.Sum256(b) == p.sum {
			d.have[i] = true
			kept += uint64(p.n)
		}
	}
	for d.prefix < len(d.have) && d.have[d.prefix] {
		d.prefix++
	}
	return kept, nil
}

// prefixBytes is how many bytes from the start are verified pieces.
func (d *pieceDownload) prefixBytes() uint64 {
	if d.prefix == len(d.table) {
		return d.total
	}
	return d.table[d.prefix].off
}

// keepPrefix cuts the staging file to its contiguous verified prefix, so
// that the controller's stream (which resumes by length) finds no holes.
func (d *pieceDownload) keepPrefix() {
	d.lock()
	n := d.prefixBytes()
	d.unlock()
	fi, err := d.file.Stat()
	if err == nil && fileSize(fi) > n {
		if err := d.file.Truncate(fileOffset(n)); err != nil {
			d.f.log.Warn("could not cut the partial download to its verified prefix", "artifact", d.digest, "err", err)
		}
	}
}

// update takes a GetPieces answer's holders and seed assignments.
func (d *pieceDownload) update(resp *ferryv1.GetPiecesResponse) {
	d.lock()
	defer d.unlock()
	ps := resp.GetPieces()
	if len(ps) == len(d.table) {
		for i, p := range ps {
			d.holders[i] = p.GetHolders()
			d.seed[i] = p.GetSeed()
		}
	}
	for _, pa := range resp.GetPeers() {
		if pa.GetNodeId() != "" && pa.GetAddress() != "" {
			d.addrs[pa.GetNodeId()] = pa.GetAddress()
		}
	}
	close(d.updated)
	d.updated = make(chan struct{})
	select {
	case d.assigned <- struct{}{}:
	default:
	}
}

// haveList is the pieces held, for GetPieces.
func (d *pieceDownload) haveList() []uint32 {
	d.lock()
	defer d.unlock()
	var out []uint32
	for i, ok := range d.have {
		if ok {
			out = append(out, uint32(i))
		}
	}
	return out
}

// run fetches every missing piece, pieceWindow at a time from the first
// missing one, while poll keeps the holders fresh. Pieces the controller
// asked this agent to seed are fetched also beyond the window (at most
// controllerPieceStreams of them at once): other agents wait for them.
func (d *pieceDownload) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	polled := make(chan struct{})
	go func() { d.poll(ctx); close(polled) }()
	defer func() { cancel(); <-polled }()
	type result struct {
		i     int
		ahead bool // a seed piece started beyond the window
		err   error
	}
	results := make(chan result, pieceWindow+controllerPieceStreams)
	inWindow, ahead := 0, 0
	var failure error
	start := func(i int, beyond bool) {
		d.busy[i] = true
		if beyond {
			ahead++
		} else {
			inWindow++
		}
		go func() { results <- result{i, beyond, d.fetch(ctx, i)} }()
	}
	for {
		if failure == nil {
			d.lock()
			for i := d.prefix; i < len(d.table) && i < d.prefix+pieceWindow && inWindow < pieceWindow; i++ {
				if !d.have[i] && !d.busy[i] {
					start(i, false)
				}
			}
			for i := d.prefix + pieceWindow; i < len(d.table) && ahead < controllerPieceStreams; i++ {
				if d.seed[i] && !d.have[i] && !d.busy[i] {
					start(i, true)
				}
			}
			done := d.prefix == len(d.table)
			d.unlock()
			if done && inWindow+ahead == 0 {
				d.announceNow(ctx)
				return nil
			}
		}
		if inWindow+ahead == 0 {
			return failure
		}
		var r result
		select {
		case r = <-results:
		case <-d.assigned:
			continue // new seed assignments may start
		}
		if r.ahead {
			ahead--
		} else {
			inWindow--
		}
		d.lock()
		d.busy[r.i] = false
		d.unlock()
		if r.err != nil && failure == nil {
			failure = r.err
			cancel() // the others end too
		}
	}
}

// poll asks GetPieces again, with the pieces held: every pollFast while
// pieces arrive or wait for a holder, else every pollSlow (a seeder that
// stops asking loses its assignments).
func (d *pieceDownload) poll(ctx context.Context) {
	for {
		wait := pollSlow
		d.lock()
		for i := d.prefix; i < len(d.table) && i < d.prefix+pieceWindow; i++ {
			if !d.have[i] && !d.seed[i] {
				wait = pollFast
			}
		}
		d.unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.announce:
			// Pace announcements to pollFast.
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-time.After(pollFast):
			}
		case <-t.C:
		}
		t.Stop()
		resp, err := d.f.getPieces(ctx, d.digest, d.haveList())
		switch {
		case ctx.Err() != nil:
			return
		case status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.Unimplemented:
			d.f.log.Info("peer exchange was turned off on the controller; fetching the rest from it", "artifact", d.digest)
			d.lock()
			d.noPeers = true
			close(d.updated)
			d.updated = make(chan struct{})
			d.unlock()
			return
		case err != nil:
			d.f.log.Debug("asking for the download's pieces again failed", "artifact", d.digest, "err", err)
			continue
		}
		d.update(resp)
	}
}

// announceNow tells the controller, once, that every piece is here, so
// that others fetch from this agent at once.
func (d *pieceDownload) announceNow(ctx context.Context) {
	if _, err := d.f.getPieces(ctx, d.digest, d.haveList()); err != nil && ctx.Err() == nil {
		d.f.log.Debug("telling the controller the download is here failed", "artifact", d.digest, "err", err)
	}
}

// source is where a piece is fetched from next.
type source struct {
	controller bool
	node, addr string
	wait       <-chan struct{} // neither yet: wait for the next GetPieces answer
}

// choose picks the next source of piece i: the controller when it asks
// this agent to seed it or peer exchange went off; else a holder not yet
// tried nor waiting for the piece itself (at random); else the
// controller when every holder failed, or when nothing arrived for
// noHolderWait (the download would stall); else a wait for the next
// GetPieces answer.
func (d *pieceDownload) choose(i int, tried, notYet map[string]bool, since time.Time) source {
	d.lock()
	defer d.unlock()
	if d.seed[i] || d.noPeers {
		return source{controller: true}
	}
	var cands []string
	for _, n := range d.holders[i] {
		if addr := d.addrs[n]; addr != "" && !d.dropped[n] && !tried[n] && !notYet[n] {
			cands = append(cands, n)
		}
	}
	if len(cands) > 0 {
		d.f.mu.Lock()
		n := cands[d.f.rng.IntN(len(cands))]
		d.f.mu.Unlock()
		return source{node: n, addr: d.addrs[n]}
	}
	if (len(tried) > 0 && len(notYet) == 0) || time.Since(d.stalledSince(since)) >= noHolderWait {
		return source{controller: true}
	}
	return source{wait: d.updated}
}

// stalledSince is when the download last made progress (a piece
// arrived), or since when later. Under d.mu.
func (d *pieceDownload) stalledSince(since time.Time) time.Time {
	if d.lastPiece.After(since) {
		return d.lastPiece
	}
	return since
}

// fetch brings piece i, verified, into the staging file.
func (d *pieceDownload) fetch(ctx context.Context, i int) error {
	p := d.table[i]
	tried := map[string]bool{}  // holders that failed
	notYet := map[string]bool{} // holders that do not have it yet (NOT_FOUND, busy): asked again after the next answer
	since := time.Now()
	for {
		src := d.choose(i, tried, notYet, since)
		if src.wait != nil {
			d.lock()
			until := d.stalledSince(since).Add(noHolderWait)
			d.unlock()
			t := time.NewTimer(time.Until(until))
			select {
			case <-src.wait:
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			t.Stop()
			clear(notYet)
			continue
		}
		var data []byte
		if src.controller {
			var err error
			if data, err = d.fromController(ctx, i); err != nil {
				return err
			}
			if sha256.Sum256(data) != p.sum {
				// The controller's copy or its table is wrong: its stream
				// and the whole-file check sort it out.
				d.f.log.Warn("a piece from the controller does not match its digest; downloading the rest as one stream", "artifact", d.digest, "piece", i)
				return errLeavePieces
			}
		} else {
			got, err := d.f.cfg.Peers.FetchPiece(ctx, src.node, src.addr, d.digest, uint32(i), p.n) //nolint:gosec // G115: at most maxPieceCount pieces.
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if c := status.Code(err); c == codes.NotFound || c == codes.ResourceExhausted {
				notYet[src.node] = true // a seeder still fetching it, or busy
				continue
			}
			tried[src.node] = true
			if err != nil {
				d.f.log.Debug("a peer did not give a piece; trying elsewhere", "artifact", d.digest, "piece", i, "peer", src.node, "addr", src.addr, "err", reason(err))
				continue
			}
			if sum := sha256.Sum256(got); sum != p.sum {
				d.badPeer(ctx, src, i, sum[:])
				continue
			}
			data = got
		}
		if err := d.write(i, data); err != nil {
			return err
		}
		if count := d.f.cfg.PieceFetched; count != nil {
			if src.controller {
				count("controller", len(data))
			} else {
				count("peer", len(data))
			}
		}
		d.lock()
		if src.controller {
			d.bytesController += uint64(len(data))
		} else {
			d.bytesPeers += uint64(len(data))
			d.peersUsed[src.node] = true
		}
		d.unlock()
		return nil
	}
}

// badPeer drops a peer that served bytes other than piece i's, reports
// it to the controller and says so in the job's log.
func (d *pieceDownload) badPeer(ctx context.Context, src source, i int, got []byte) {
	gotDigest := sha256digest.Format(got)
	if d.f.cfg.BadPiece != nil {
		d.f.cfg.BadPiece()
	}
	d.lock()
	d.dropped[src.node] = true
	d.unlock()
	d.f.log.Warn("a peer served a piece that does not match its digest; dropped it for this download and reporting it", "artifact", d.digest, "piece", i, "peer", src.node, "addr", src.addr, "got", gotDigest)
	d.note(fmt.Sprintf("peer %s (%s) served piece %d of %s with the wrong bytes (got %s); dropped it for this download, reported it to the controller, fetching the piece elsewhere",
		src.node, src.addr, i, d.digest, sha256digest.Short(gotDigest)))
	rctx, cancel := context.WithTimeout(ctx, reportPeerTimeout)
	defer cancel()
	if _, err := d.f.cfg.Client.ReportBadPeer(rctx, &ferryv1.ReportBadPeerRequest{NodeId: src.node, Digest: d.digest, Index: uint32(i), GotDigest: gotDigest}); err != nil && ctx.Err() == nil { //nolint:gosec // G115: at most maxPieceCount pieces.
		d.f.log.Warn("could not report the peer that served bad bytes", "peer", src.node, "artifact", d.digest, "err", reason(err))
	}
}

// write puts verified piece i in the staging file and offers it.
func (d *pieceDownload) write(i int, data []byte) error {
	p := d.table[i]
	if _, err := d.f.writeAt(d.file, data, fileOffset(p.off)); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			d.lock()
			n := d.prefixBytes()
			d.unlock()
			return d.f.noSpace(d.digest[len(sha256digest.Prefix):], d.file, n, d.total, err)
		}
		return fmt.Errorf("artifact %s: write staging file: %w", d.digest, err)
	}
	d.lock()
	d.have[i] = true
	d.lastPiece = time.Now()
	for d.prefix < len(d.have) && d.have[d.prefix] {
		d.prefix++
	}
	n := d.prefixBytes()
	d.unlock()
	d.f.served(d.digest, i)
	d.hasher.advance(fileOffset(n))
	d.progMu <- struct{}{}
	if n > d.reported {
		d.reported = n
		d.progress(n, d.total)
	}
	<-d.progMu
	select {
	case d.announce <- struct{}{}:
	default:
	}
	return nil
}

// fromController fetches piece i from the controller, retrying a stream
// that breaks as the whole-file download does.
func (d *pieceDownload) fromController(ctx context.Context, i int) ([]byte, error) {
	p := d.table[i]
	failures := 0
	for {
		select {
		case d.f.ctlPieces <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		data, err := d.controllerPiece(ctx, p)
		<-d.f.ctlPieces
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		switch status.Code(err) {
		case codes.NotFound, codes.FailedPrecondition, codes.OutOfRange:
			return nil, errLeavePieces // the stream says it as it always has
		}
		if refusal(err) {
			return nil, errLeavePieces
		}
		var fatal *backoff.PermanentError
		if errors.As(err, &fatal) {
			return nil, fatal.Err
		}
		failures++
		if failures > d.f.cfg.Retries {
			return nil, fmt.Errorf("%w: download artifact %s: %d attempts in a row failed to fetch piece %d (%s); the last one: %s",
				ErrUnreachable, d.digest, failures, i, bytesize.IEC(uint64(p.n)), reason(err))
		}
		wait := d.f.backoff(failures)
		d.f.log.Info("piece stream from the controller broke; retrying", "artifact", d.digest, "piece", i, "retry_in", wait, "err", err)
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// controllerPiece reads one piece from a DownloadArtifact stream. A
// controller that ignores the length (older) streams on: the stream is
// ended once the piece is in.
func (d *pieceDownload) controllerPiece(ctx context.Context, p pieceMeta) ([]byte, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s, err := d.f.cfg.Client.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: d.digest, Offset: p.off, Length: uint64(p.n), MaxChunkSize: chunk.Max})
	if err != nil {
		return nil, err
	}
	stall := time.AfterFunc(d.f.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	buf := bytes.NewBuffer(make([]byte, 0, p.n))
	var msg ferryv1.DownloadArtifactResponse
	for buf.Len() < int(p.n) {
		msg.Reset()
		if err := s.RecvMsg(&msg); err != nil {
			if errors.Is(context.Cause(ctx), errStalled) {
				return nil, status.Errorf(codes.Unavailable, "no bytes for %v at %d of a piece's %d bytes", d.f.cfg.StallTimeout, buf.Len(), p.n)
			}
			if errors.Is(err, io.EOF) {
				return nil, status.Errorf(codes.Unavailable, "stream ended at %d of a piece's %d bytes", buf.Len(), p.n)
			}
			return nil, err
		}
		stall.Reset(d.f.cfg.StallTimeout)
		if msg.GetSize() != d.total {
			return nil, backoff.Permanent(fmt.Errorf("artifact %s: the controller says it has %d bytes, %d were expected; the package and the artifact disagree: apply the package again", d.digest, msg.GetSize(), d.total))
		}
		if want := p.off + uint64(buf.Len()); msg.GetOffset() != want { //nolint:gosec // G115: a buffer's length is never negative.
			return nil, status.Errorf(codes.DataLoss, "chunk at offset %d, expected %d", msg.GetOffset(), want)
		}
		data := msg.GetData()
		if rest := int(p.n) - buf.Len(); len(data) > rest {
			data = data[:rest]
		}
		buf.Write(data)
	}
	return buf.Bytes(), nil
}

// logSources says in the job's log where the pieces came from.
func (d *pieceDownload) logSources() {
	d.lock()
	peers, ctl, used := d.bytesPeers, d.bytesController, len(d.peersUsed)
	d.unlock()
	if peers == 0 && ctl == 0 {
		return // all of it was here already
	}
	d.f.log.Info("download fetched in pieces", "artifact", d.digest, "from_peers", peers, "peers", used, "from_controller", ctl)
	d.note(fmt.Sprintf("fetched %s in %d pieces: %s from %d peers, %s from the controller; every piece and the whole file verified",
		d.digest, len(d.table), bytesize.IEC(peers), used, bytesize.IEC(ctl)))
}
