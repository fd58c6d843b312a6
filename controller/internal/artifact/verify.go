package artifact

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/ctxio"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Stored blobs are hashed again from disk by three callers: an admin
// (Verify), a node whose download did not match its digest
// (ReportMismatch), and the controller after it starts (VerifyStored). What
// a check finds is written to every record sharing the blob: a blob whose
// bytes no longer match is marked damaged, and downloads of it are refused
// with ErrDamaged until a push brings the same bytes again (commit); one
// that matches again is served again.
//
// A node is not trusted: its report only makes the controller hash its own
// copy, at most once per RecheckEvery per blob whoever reports, so a node
// can neither quarantine a good blob nor make the controller read one
// over and over.

// DefaultRecheckEvery is how often at most nodes' reports make the
// controller hash one blob again.
const DefaultRecheckEvery = time.Minute

// DefaultVerifyRate is the bytes per second the check after start reads:
// a few minutes for a store of several GiB, leaving the disk to downloads.
const DefaultVerifyRate = 64 << 20

// maxHashing bounds the blobs hashed at once, whatever asks for them.
const maxHashing = 4

// Check is what hashing one stored blob again found.
type Check struct {
	// Artifact is the record checked as it is now; its State says ok or
	// damaged.
	Artifact *ferryv1.Artifact
	// Got is what the stored bytes hash to ("sha256:<hex>"); "" when they
	// could not be read.
	Got string
	// Err says why the bytes could not be read or the check says nothing
	// (the blob file is missing; a push replaced it meanwhile); nil when
	// they were hashed.
	Err error
}

// Damaged reports whether the artifact is quarantined.
func (c Check) Damaged() bool { return damaged(c.Artifact) }

func damaged(a *ferryv1.Artifact) bool {
	return a.GetState() == ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED
}

// Quarantined returns what a download of a gets when it is damaged
// (ErrDamaged, naming the artifact and the fix), or nil when it is served.
func Quarantined(a *ferryv1.Artifact) error {
	if !damaged(a) {
		return nil
	}
	return damagedErr(a)
}

// damagedErr is what a download of a quarantined artifact gets.
func damagedErr(a *ferryv1.Artifact) error {
	found := "its blob file is missing"
	if a.StoredDigest != "" {
		found = "sha256 mismatch: its stored bytes hash to " + sha256digest.Short(a.StoredDigest)
	}
	return fmt.Errorf("artifact %s (%s) is %w (%s); re-push it from the original file with `ferryctl artifact push FILE --name %s --version %s` and agents get it again",
		Key(a), sha256digest.Short(a.Digest), ErrDamaged, found, a.Name, a.Version)
}

var (
	errBlobMissing = errors.New("the blob file is missing")
	errReplaced    = errors.New("a push replaced the blob while it was being hashed; check it again")
)

// checks bounds and spaces out the hashing of stored blobs.
type checks struct {
	every time.Duration // nodes' reports hash a blob at most this often
	rate  int64         // bytes per second VerifyStored reads; <= 0: no cap
	sem   chan struct{} // a slot per blob being hashed

	mu    sync.Mutex
	blobs map[string]*blobChecks // by digest
}

type blobChecks struct {
	turn     chan struct{} // held while a node's report is answered
	hashedAt time.Time     // zero: not since start
}

func newChecks(every time.Duration, rate int64) *checks {
	if every <= 0 {
		every = DefaultRecheckEvery
	}
	if rate == 0 {
		rate = DefaultVerifyRate
	}
	return &checks{every: every, rate: rate, sem: make(chan struct{}, maxHashing), blobs: map[string]*blobChecks{}}
}

// of returns digest's entry; digests are those of stored records, so the
// map grows with the store, not with what nodes send.
func (c *checks) of(digest string) *blobChecks {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.blobs[digest]
	if b == nil {
		b = &blobChecks{turn: make(chan struct{}, 1)}
		c.blobs[digest] = b
	}
	return b
}

func (c *checks) lastHashed(digest string) time.Time {
	b := c.of(digest)
	c.mu.Lock()
	defer c.mu.Unlock()
	return b.hashedAt
}

func (c *checks) hashed(digest string, at time.Time) {
	b := c.of(digest)
	c.mu.Lock()
	b.hashedAt = at
	c.mu.Unlock()
}

// recent reports whether digest's blob was hashed less than every ago.
func (s *Store) recent(digest string) (time.Time, bool) {
	at := s.checks.lastHashed(digest)
	return at, !at.IsZero() && s.now().Sub(at) < s.checks.every
}

// Verify hashes again the stored blobs of the artifact ref names, or of
// every artifact when ref is "", one blob at a time (a blob several
// records share once), records what it found, and calls report with each
// artifact's check in key order. An error from report ends the run.
func (s *Store) Verify(ctx context.Context, ref string, report func(Check) error) error {
	var recs []*ferryv1.Artifact
	if ref == "" {
		all, err := s.records.Artifacts()
		if err != nil {
			return err
		}
		recs = all
	} else {
		a, err := s.Resolve(ref)
		if err != nil {
			return err
		}
		recs = []*ferryv1.Artifact{a}
	}
	type result struct {
		got     string
		readErr error
		shared  []*ferryv1.Artifact // the blob's records, as written
	}
	done := map[string]result{}
	for _, a := range recs {
		r, ok := done[a.Digest]
		if !ok {
			var err error
			r.got, r.readErr, r.shared, err = s.verify(ctx, a.Digest, 0)
			if err != nil {
				return fmt.Errorf("artifact %s: %w", Key(a), err)
			}
			done[a.Digest] = r
		}
		if err := report(Check{Artifact: byKey(r.shared, Key(a), a), Got: r.got, Err: r.readErr}); err != nil {
			return err
		}
	}
	return nil
}

// current returns a's record as stored now, or a when it is gone.
func (s *Store) current(a *ferryv1.Artifact) *ferryv1.Artifact {
	if now, err := s.records.Artifact(Key(a)); err == nil {
		return now
	}
	return a
}

// ReportMismatch answers a node whose download of digest (an artifact's
// original or its zstd form) hashed to got. The stored blobs are hashed again, unless it was within RecheckEvery
// (whoever asked: then that check answers), and quarantined only when it
// is damaged too. Reports about one blob wait for each other, so a burst
// of them costs one read.
func (s *Store) ReportMismatch(ctx context.Context, digest, got, node string) (Check, error) {
	form, err := s.LookupForm(digest) // the original or its zstd form: verify hashes both
	if err != nil {
		return Check{}, err
	}
	rec := form.Rec
	if damaged(rec) {
		return Check{Artifact: rec, Got: rec.StoredDigest}, nil
	}
	b := s.checks.of(rec.Digest)
	select {
	case b.turn <- struct{}{}:
	case <-ctx.Done():
		return Check{}, ctx.Err()
	}
	defer func() { <-b.turn }()
	log := s.log.With("node", node, "artifact", Key(rec), "digest", rec.Digest, "node_got", got)
	if at, recent := s.recent(rec.Digest); recent {
		rec = s.current(rec)
		// Debug: a node repeating itself must not flood the log either.
		log.Debug("node reports a download that did not match its digest; the stored blob was hashed recently, so not again", "hashed_at", at, "damaged", damaged(rec))
		return Check{Artifact: rec, Got: rec.StoredDigest}, nil
	}
	stored, readErr, shared, err := s.verify(ctx, rec.Digest, 0)
	if err != nil {
		return Check{}, fmt.Errorf("artifact %s: %w", Key(rec), err)
	}
	c := Check{Artifact: byKey(shared, Key(rec), rec), Got: stored, Err: readErr}
	if c.Damaged() {
		log.Error("node reports a download that did not match its digest, and the stored blob is damaged too: quarantined until its bytes are pushed again", "stored", stored, "err", readErr)
	} else {
		log.Warn("node reports a download that did not match its digest, but the stored blob matches: not quarantined (the bytes changed in transit or on the node)")
	}
	return c, nil
}

// VerifyStored hashes every stored blob again, reading at most VerifyRate
// bytes a second, and quarantines those that no longer match. The
// controller runs it once after it starts, so a blob damaged while it was
// down is found before an agent downloads it; a blob hashed within
// RecheckEvery is skipped. It returns when done or when ctx ends.
func (s *Store) VerifyStored(ctx context.Context) {
	all, err := s.records.Artifacts()
	if err != nil {
		s.log.Error("check the stored artifacts after start", "err", err)
		return
	}
	start := time.Now()
	seen := map[string]bool{}
	var checked, bad int
	for _, a := range all {
		if seen[a.Digest] {
			continue
		}
		seen[a.Digest] = true
		if _, recent := s.recent(a.Digest); recent {
			continue
		}
		_, _, shared, err := s.verify(ctx, a.Digest, s.checks.rate)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Warn("check a stored artifact after start", "artifact", Key(a), "err", err)
			continue
		}
		checked++
		if len(shared) > 0 && damaged(shared[0]) {
			bad++
		}
	}
	if checked > 0 {
		s.log.Info("checked the stored artifacts after start", "blobs", checked, "damaged", bad, "took", time.Since(start).Round(time.Millisecond))
	}
}

// Damaged counts the artifacts (records) whose stored bytes are damaged.
func (s *Store) Damaged() (int, error) {
	bad, err := s.matching(damaged)
	return len(bad), err
}

// verify hashes digest's blob (at most rate bytes a second; <= 0: no cap)
// and records what it found on every record sharing it, returned as
// written. readErr says why the bytes could not be read (damaged, too);
// err is for failures that say nothing about the blob.
//
// With other controllers (SetFetcher), a blob missing or damaged here is
// first replaced by a verified copy from one of them and hashed again; a
// blob this controller merely lacks, and cannot get now, says nothing of
// the copies the others hold, so the records are left as they are.
func (s *Store) verify(ctx context.Context, digest string, rate int64) (got string, readErr error, shared []*ferryv1.Artifact, err error) {
	repaired := false
	for attempt := 0; ; attempt++ {
		got, file, readErr, err := s.hash(ctx, digest, rate)
		if err != nil {
			return "", nil, nil, err
		}
		if readErr == nil && got == digest {
			// The artifact is intact only when every form agents download
			// is: a damaged zstd form quarantines it like a damaged original.
			if got, readErr, err = s.hashZstdForm(ctx, digest, rate); err != nil {
				return "", nil, nil, err
			}
		}
		if f := s.fetcherOf(); f != nil && !repaired && (readErr != nil || got != digest) {
			repaired = true
			rerr := s.repair(ctx, f, digest)
			if rerr == nil {
				continue // hash the copy
			}
			if errors.Is(readErr, errBlobMissing) {
				s.log.Warn("artifact blob not held here, and no other controller could send it now; checked again later", "digest", digest, "err", rerr)
				shared, err := s.matching(func(a *ferryv1.Artifact) bool { return a.Digest == digest })
				return "", readErr, shared, err
			}
		}
		shared, replaced, err := s.record(digest, got, readErr, file)
		switch {
		case err != nil:
			return "", nil, nil, err
		case replaced && attempt == 0:
			continue // hash the new file
		case replaced:
			return "", errReplaced, shared, nil
		}
		return got, readErr, shared, nil
	}
}

// hashZstdForm hashes the zstd form of the artifact whose original (digest)
// matched, when it has one. It returns digest when the form matches too
// (or there is none), else what the form's bytes hash to, or why they
// cannot be read.
func (s *Store) hashZstdForm(ctx context.Context, digest string, rate int64) (got string, readErr, err error) {
	recs, err := s.matching(func(a *ferryv1.Artifact) bool { return a.Digest == digest && a.ZstdDigest != "" })
	if err != nil || len(recs) == 0 {
		return digest, nil, err
	}
	zd := recs[0].ZstdDigest
	zgot, _, readErr, err := s.hash(ctx, zd, rate)
	switch {
	case err != nil:
		return "", nil, err
	case readErr != nil:
		return "", fmt.Errorf("its zstd form %s: %w", sha256digest.Short(zd), readErr), nil
	case zgot != zd:
		return zgot, nil, nil
	}
	return digest, nil, nil
}

// hash reads digest's blob as it lies on disk and returns its digest and
// the file it read. readErr is set (and err nil) when the bytes are gone
// or the disk cannot read them.
func (s *Store) hash(ctx context.Context, digest string, rate int64) (got string, file os.FileInfo, readErr, err error) {
	select {
	case s.checks.sem <- struct{}{}:
	case <-ctx.Done():
		return "", nil, nil, ctx.Err()
	}
	defer func() { <-s.checks.sem }()
	f, err := os.Open(s.blobPath(strings.TrimPrefix(digest, sha256digest.Prefix)))
	if err != nil {
		readErr, err = unreadable(err)
		return "", nil, readErr, err
	}
	defer func() { _ = f.Close() }() // read-only
	if file, err = f.Stat(); err != nil {
		return "", nil, nil, err
	}
	h := sha256.New()
	var w io.Writer = h
	if rate > 0 {
		w = &paced{ctx: ctx, w: h, rate: rate, start: time.Now()}
	}
	bufp := s.chunks.Get().(*[]byte)
	defer s.chunks.Put(bufp)
	if _, err := io.CopyBuffer(w, ctxio.NewReader(ctx, f), *bufp); err != nil {
		if ctx.Err() != nil {
			return "", nil, nil, ctx.Err()
		}
		readErr, err = unreadable(err)
		return "", file, readErr, err
	}
	return sha256digest.Format(h.Sum(nil)), file, nil, nil
}

// unreadable tells a blob that is gone or that the disk cannot read
// (damaged) from a failure that says nothing about its bytes.
func unreadable(err error) (readErr, other error) {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errBlobMissing, nil
	case errors.Is(err, syscall.EIO):
		return fmt.Errorf("the disk cannot read the blob file: %w", err), nil
	}
	return nil, fmt.Errorf("read the blob file: %w", err)
}

// record writes what hashing digest's blob found to every record sharing
// it, unless the file there is no longer the one hashed (a push replaced
// it): then the records are returned unchanged and replaced is true.
func (s *Store) record(digest, got string, readErr error, hashed os.FileInfo) (shared []*ferryv1.Artifact, replaced bool, err error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	now, statErr := os.Stat(s.blobPath(strings.TrimPrefix(digest, sha256digest.Prefix)))
	if hashed != nil && (statErr != nil || !os.SameFile(hashed, now)) || hashed == nil && errors.Is(readErr, errBlobMissing) && statErr == nil {
		shared, err := s.matching(func(a *ferryv1.Artifact) bool { return a.Digest == digest })
		return shared, true, err
	}
	bad := readErr != nil || got != digest
	at := s.now()
	wasDamaged := false
	shared, err = s.records.UpdateArtifacts(digest, func(a *ferryv1.Artifact) {
		wasDamaged = wasDamaged || damaged(a)
		a.CheckedAt = timestamppb.New(at)
		if bad {
			a.State, a.StoredDigest = ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED, got
		} else {
			a.State, a.StoredDigest = ferryv1.ArtifactState_ARTIFACT_STATE_OK, ""
		}
	}, nil) // the controller's own finding, whoever asked: no admin's change
	if err != nil {
		return nil, false, fmt.Errorf("record the check of artifact %s: %w", digest, err)
	}
	s.checks.hashed(digest, at)
	keys := make([]string, len(shared))
	for i, a := range shared {
		keys[i] = Key(a)
	}
	switch {
	case len(shared) == 0:
	case bad && !wasDamaged:
		s.log.Error("artifact blob is damaged: quarantined, agents are refused it until its bytes are pushed again", "artifact", strings.Join(keys, ","), "digest", digest, "stored", got, "err", readErr)
	case !bad && wasDamaged:
		s.log.Info("damaged artifact blob matches its digest again: serving it again", "artifact", strings.Join(keys, ","), "digest", digest)
	}
	return shared, false, nil
}

// paced passes writes on at most rate bytes a second on average, and
// stops when ctx ends.
type paced struct {
	ctx   context.Context
	w     io.Writer
	rate  int64
	start time.Time
	n     int64
}

func (p *paced) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += int64(n)
	due := time.Duration(float64(p.n) / float64(p.rate) * float64(time.Second))
	if wait := due - time.Since(p.start); wait > 0 && err == nil {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.ctx.Done():
			return n, p.ctx.Err()
		}
	}
	return n, err
}
