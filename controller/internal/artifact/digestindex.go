package artifact

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// digestIndex finds the record of a digest without reading every record:
// downloads, verification and job dispatch look artifacts up by digest,
// the store keys them by name@version. For each digest an artifact is
// downloaded by (its original's, its zstd form's) it remembers the key of
// a record that had it at the last scan. That is a hint, not an answer:
// the record is read again and checked on every lookup, and when it is
// gone or no longer has the digest the records are scanned and the hints
// rebuilt. So the index never needs invalidating, also when other
// controllers sharing an etcd store write the records.
type digestIndex struct {
	mu   sync.Mutex
	orig map[string]string // original digest → record key
	zstd map[string]string // zstd form's digest → record key
}

// hints are the record keys to try for digest d: a record with the
// original d first, then (zstdToo) one whose zstd form is d.
func (x *digestIndex) hints(d string, zstdToo bool) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var keys []string
	if k, ok := x.orig[d]; ok {
		keys = append(keys, k)
	}
	if k, ok := x.zstd[d]; ok && zstdToo {
		keys = append(keys, k)
	}
	return keys
}

// rebuild replaces the hints with those of all (in key order: the last
// record of a digest wins, as the scan's answer does).
func (x *digestIndex) rebuild(all []*ferryv1.Artifact) {
	orig, zstd := make(map[string]string, len(all)), make(map[string]string)
	for _, a := range all {
		orig[a.GetDigest()] = Key(a)
		if a.GetZstdDigest() != "" {
			zstd[a.GetZstdDigest()] = Key(a)
		}
	}
	x.mu.Lock()
	x.orig, x.zstd = orig, zstd
	x.mu.Unlock()
}

// withDigest returns a record whose original has digest d ("sha256:<hex>",
// parsed), or with zstdToo one whose zstd form has it: the record its
// hint names when that still has d (one read), else the last such record
// in key order (a scan, which refreshes the hints). A digest no record
// has is always a scan; the hints only ever hold digests of records.
func (s *Store) withDigest(d string, zstdToo bool) (*ferryv1.Artifact, error) {
	has := func(a *ferryv1.Artifact) bool { return a.GetDigest() == d || zstdToo && a.GetZstdDigest() == d }
	for _, k := range s.digests.hints(d, zstdToo) {
		rec, err := s.records.Artifact(k)
		switch {
		case err == nil && has(rec):
			return rec, nil
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
	}
	all, err := s.records.Artifacts()
	if err != nil {
		return nil, err
	}
	s.digests.rebuild(all)
	var found *ferryv1.Artifact
	for _, a := range all {
		if has(a) {
			found = a
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no artifact has digest %s; push it with `ferryctl artifact push`", ErrNotFound, d)
	}
	return found, nil
}
