package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// OpenReadOnly opens an existing store to read it, checked like Open but
// neither migrated nor written. A running controller holds its store
// locked, so this fails with ErrLocked then: back it up through the
// controller instead.
func OpenReadOnly(path string) (*Store, error) {
	db, err := openChecked(path, false, true)
	if err != nil {
		return nil, err
	}
	if err := db.View(func(tx *bolt.Tx) error { _, err := format(tx, path); return err }); err != nil {
		_ = db.Close() // read-only; the error returned is the one that matters
		return nil, err
	}
	return &Store{kv: boltKV{db}, db: db}, nil
}

// Backup writes a consistent copy of the store to w, a bbolt file that
// Open accepts, and returns its size. It runs in one read transaction, so
// the controller keeps serving (and writing) while it runs.
func (s *Store) Backup(w io.Writer) (int64, error) {
	if s.db == nil {
		return 0, ErrEtcdBackup
	}
	var n int64
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("back up store %s: %w", s.db.Path(), err)
	}
	return n, nil
}

// ErrEtcdBackup is Backup's error on a store kept in etcd: etcd's own
// snapshot is the backup there.
var ErrEtcdBackup = errors.New("the store is kept in etcd, which Backup does not copy: back it up with `etcdctl snapshot save FILE` (docs/operations.md, \"The store\")")

// Counts is how many records of each kind a store holds.
type Counts struct {
	Nodes, Tokens, Packages, Artifacts, Rollouts, AuditEvents int
}

func (c Counts) String() string {
	parts := make([]string, 0, 6)
	for _, f := range []struct {
		n    int
		what string
	}{{c.Nodes, "node"}, {c.Tokens, "token"}, {c.Packages, "package"}, {c.Artifacts, "artifact"}, {c.Rollouts, "rollout"}, {c.AuditEvents, "audit event"}} {
		s := fmt.Sprintf("%d %s", f.n, f.what)
		if f.n != 1 {
			s += "s"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// Count counts the store's records.
func (s *Store) Count() (Counts, error) {
	var c Counts
	err := s.kv.View(func(tx kvTx) error {
		for _, f := range []struct {
			bucket []byte
			n      *int
		}{{bucketNodes, &c.Nodes}, {bucketTokens, &c.Tokens}, {bucketPackages, &c.Packages}, {bucketArtifacts, &c.Artifacts}, {bucketRollouts, &c.Rollouts}, {bucketAudit, &c.AuditEvents}} {
			*f.n = 0
			if b := tx.Bucket(f.bucket); b != nil {
				if err := forEachKV(b, func(_, _ []byte) error { *f.n++; return nil }); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return c, err
}

// Restore replaces the store at path with the backup at from. The backup
// is checked first (it must open like a store); path must not be in use
// (ErrLocked while a controller runs on it). The replaced file, if any, is
// kept beside it as path.replaced-<time>, returned as kept. The swap is a
// rename, so path always holds a whole store.
func Restore(from, path string, now time.Time) (kept string, counts Counts, err error) {
	b, err := OpenReadOnly(from)
	if err != nil {
		return "", Counts{}, fmt.Errorf("backup %s cannot be restored: %w", from, err)
	}
	counts, err = b.Count()
	_ = b.Close() // read-only: nothing to flush
	if err != nil {
		return "", Counts{}, err
	}
	unlock, err := lockIdle(path)
	if err != nil {
		return "", Counts{}, err
	}
	defer unlock()
	src, err := os.Open(from)
	if err != nil {
		return "", Counts{}, fmt.Errorf("restore %s: %w", path, err)
	}
	defer func() { _ = src.Close() }() // read-only
	err = atomicfile.Write(path, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	}, func(string) error {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		kept = path + ".replaced-" + now.UTC().Format("20060102T150405Z")
		if err := os.Link(path, kept); err != nil {
			return fmt.Errorf("restore %s: keep the replaced store: %w", path, err)
		}
		return nil
	})
	return kept, counts, err
}

// lockIdle takes the lock bbolt takes on path (flock, exclusive), so a
// controller running on it is told apart from a stopped one.
func lockIdle(path string) (unlock func(), err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close() // read-only, not locked
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &openError{ErrLocked, fmt.Sprintf("store %s is in use by a running ferry-controller; stop it before restoring", path)}
		}
		return nil, fmt.Errorf("restore %s: lock: %w", path, err)
	}
	return func() { _ = f.Close() }, nil // closing the file releases the lock
}
