package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io/fs"
	"math"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors Open's callers tell apart with errors.Is; the messages name the
// file.
var (
	// ErrNoStore: the file is missing or empty and Options.Create was not
	// given.
	ErrNoStore = errors.New("no store")
	// ErrDamaged: the file is not a sound store (truncated, overwritten,
	// not a bbolt file, or written by a newer controller).
	ErrDamaged = errors.New("store damaged")
	// ErrLocked: another process holds the store open.
	ErrLocked = errors.New("store locked")
)

// openError carries the message a user sees and matches its kind with
// errors.Is.
type openError struct {
	kind error
	msg  string
}

func (e *openError) Error() string        { return e.msg }
func (e *openError) Is(target error) bool { return target == e.kind }

func damaged(path, format string, args ...any) error {
	return &openError{ErrDamaged, fmt.Sprintf("store %s is damaged: %s; restore it from a backup", path, fmt.Sprintf(format, args...))}
}

func truncated(path string, have, want int64) error {
	return damaged(path, "it has %d bytes but its header says %d: the file was truncated", have, want)
}

// lockTimeout bounds the wait for another process's lock: a second
// controller on the same data dir fails fast instead of hanging.
const lockTimeout = 2 * time.Second

// openChecked opens the bbolt file at path and checks it before anything
// writes to it: the file exists and has content (or create allows making
// it), bbolt accepts its header, the file holds every page the header
// claims, every bucket, key and value can be read, and bbolt's consistency
// check passes. Whatever bbolt does on a damaged file (an error, a panic,
// a fault on the memory-mapped pages) becomes an error matching
// ErrDamaged that names the file.
func openChecked(path string, create, readOnly bool) (*bolt.DB, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !create {
			return nil, &openError{ErrNoStore, fmt.Sprintf("store %s does not exist", path)}
		}
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return nil, damaged(path, "it is not a regular file")
	case fi.Size() == 0 && !create:
		return nil, &openError{ErrNoStore, fmt.Sprintf("store %s is empty (0 bytes)", path)}
	case fi.Size() > 0:
		if err := checkHeader(path, fi.Size()); err != nil {
			return nil, err
		}
	}

	// Kept to close if bbolt panics mid-open. (Its memory map keeps the
	// file, and so its lock, until the process ends; checkHeader catches
	// what would make bbolt panic here.)
	var file *os.File
	opts := &bolt.Options{
		Timeout:  lockTimeout,
		ReadOnly: readOnly,
		// Read the freelist here, under the panic guard, and not later
		// in bbolt's own goroutine during Check.
		PreLoadFreelist: true,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	}
	var db *bolt.DB
	err = guard(path, func() error {
		var err error
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if err != nil {
		if db == nil && file != nil {
			_ = file.Close() // the open failed; its error is the one returned
		}
		return nil, openErr(path, err)
	}
	if err := guard(path, func() error { return check(db, path) }); err != nil {
		_ = db.Close() // the check's error is the one returned
		return nil, err
	}
	return db, nil
}

// openErr says what a failed bbolt.Open means for the operator.
func openErr(path string, err error) error {
	var oe *openError
	switch {
	case errors.As(err, &oe):
		return err
	case errors.Is(err, berrors.ErrTimeout):
		return &openError{ErrLocked, fmt.Sprintf("store %s is locked by another process; is another ferry-controller using this --data-dir?", path)}
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("open store %s: %w; run as the user that owns the data dir", path, err)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return damaged(path, "its header is not a valid bbolt header (%v)", err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("open store %s: %w", path, err)
	}
	// bbolt's other open errors ("file size too small", a failed map of
	// the pages) come from the file's content.
	return damaged(path, "%v", err)
}

// guard runs fn with faults on memory-mapped pages turned into panics,
// and turns any panic into an ErrDamaged error: bbolt panics (or the
// runtime faults) when it follows a damaged page.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, "reading it failed (%v)", r)
		}
	}()
	return fn()
}

// check reads the whole file once. Walking every bucket here first, under
// guard, means bbolt's Check (which runs in a goroutine of its own, where
// a fault could not be recovered) only visits pages already read safely.
func check(db *bolt.DB, path string) error {
	return db.View(func(tx *bolt.Tx) error {
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("open store %s: %w", path, err)
		}
		if tx.Size() > fi.Size() {
			return truncated(path, fi.Size(), tx.Size())
		}
		if err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b, 1) }); err != nil {
			return damaged(path, "%v", err)
		}
		var problems []error
		for err := range tx.Check() {
			problems = append(problems, err)
		}
		switch len(problems) {
		case 0:
			return nil
		case 1:
			return damaged(path, "bbolt's check found: %v", problems[0])
		}
		return damaged(path, "bbolt's check found %d problems, the first: %v", len(problems), problems[0])
	})
}

// walk reads every key and value of b and its nested buckets: hashing
// them touches every byte, so a damaged page panics or faults here, under
// guard.
func walk(b *bolt.Bucket, depth int) error {
	// Ferry nests buckets a level or two deep; a damaged file could nest
	// them deep enough to overflow the stack, which no recover catches.
	if depth > maxBucketDepth {
		return fmt.Errorf("buckets nested more than %d deep, which Ferry never writes", maxBucketDepth)
	}
	h := crc32.NewIEEE()
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		_, _ = h.Write(k) // a hash.Hash's Write never fails
		if v != nil {
			_, _ = h.Write(v)
		} else if nested := b.Bucket(k); nested != nil {
			if err := walk(nested, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxBucketDepth bounds how deep check follows nested buckets.
const maxBucketDepth = 16

// bbolt's file layout (go.etcd.io/bbolt/internal/common): pages start
// with a 16-byte header (id, flags, count, overflow); pages 0 and 1 are
// meta pages, whose fields follow the header.
const (
	pageHeaderSize   = 16
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	metaLen          = 64 // the meta fields up to and including the checksum
	metaChecksumAt   = 56
	freelistPageFlag = 0x10
	noFreelist       = 0xFFFFFFFFFFFFFFFF
)

// header is what the newest valid meta page says.
type header struct {
	pageSize, hwm, freelist uint64 // hwm: pages in use
}

// readHeader reads the meta pages at the start of a bbolt file; ok is
// false when neither is valid (bbolt.Open then says why). Meta page 0 is
// at offset 0 and page 1 one page further; the page size is only known
// from a valid meta page, so every size bbolt allows is tried, as bbolt
// does.
func readHeader(f *os.File) (h header, ok bool) {
	var bestTxid uint64
	offsets := []int64{0}
	for i := range 15 {
		offsets = append(offsets, 1024<<i)
	}
	ne := binary.NativeEndian
	for _, off := range offsets {
		var buf [pageHeaderSize + metaLen]byte
		if _, err := f.ReadAt(buf[:], off); err != nil {
			continue
		}
		m := buf[pageHeaderSize:]
		sum := fnv.New64a()
		_, _ = sum.Write(m[:metaChecksumAt]) // a hash.Hash's Write never fails
		if ne.Uint32(m[0:]) != boltMagic || ne.Uint32(m[4:]) != boltVersion || ne.Uint64(m[metaChecksumAt:]) != sum.Sum64() {
			continue
		}
		pageSize := uint64(ne.Uint32(m[8:]))
		if off != 0 && uint64(off) != pageSize { //nolint:gosec // the offsets are positive constants
			continue
		}
		if txid := ne.Uint64(m[48:]); !ok || txid > bestTxid {
			h = header{pageSize: pageSize, freelist: ne.Uint64(m[32:]), hwm: ne.Uint64(m[40:])}
			bestTxid, ok = txid, true
		}
	}
	return h, ok
}

// checkHeader looks at what bbolt.Open reads through its memory map,
// before it does: a file shorter than its header says (bbolt would fault
// on the pages past its end) or a freelist page that is not one (bbolt
// would panic, and the panic would leave the file mapped and locked).
func checkHeader(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open store %s: %w", path, err)
	}
	defer func() { _ = f.Close() }() // read-only
	h, ok := readHeader(f)
	if !ok {
		return nil
	}
	// hwm*pageSize > size, tested so that a damaged header's hwm cannot
	// overflow the product and pass.
	if h.pageSize != 0 && h.hwm > uint64(size)/h.pageSize { //nolint:gosec // a file's size is never negative
		return truncated(path, size, int64(min(h.hwm, math.MaxInt64/h.pageSize)*h.pageSize)) //nolint:gosec // capped at MaxInt64
	}
	if h.freelist == noFreelist {
		return nil
	}
	var page [pageHeaderSize + 8]byte
	if h.freelist >= h.hwm {
		return damaged(path, "its freelist page %d is past its last page %d", h.freelist, h.hwm)
	}
	if _, err := f.ReadAt(page[:], int64(h.freelist*h.pageSize)); err != nil { //nolint:gosec // freelist < hwm, and hwm*pageSize <= size, an int64
		return fmt.Errorf("open store %s: %w", path, err)
	}
	ne := binary.NativeEndian
	flags, count, overflow := ne.Uint16(page[8:]), uint64(ne.Uint16(page[10:])), uint64(ne.Uint32(page[12:]))
	if count == 0xFFFF { // a long freelist keeps its length in its first element
		count = ne.Uint64(page[pageHeaderSize:]) + 1
	}
	switch {
	case flags != freelistPageFlag:
		return damaged(path, "page %d, which its header names as the freelist, is not a freelist page", h.freelist)
	case h.freelist+overflow >= h.hwm || count > ((overflow+1)*h.pageSize-pageHeaderSize)/8:
		return damaged(path, "its freelist (page %d, %d entries) runs past its pages", h.freelist, count)
	}
	return nil
}
