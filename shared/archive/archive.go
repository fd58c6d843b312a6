// Package archive extracts tar, tar.gz, tar.zst and zip artifacts into a
// directory without ever writing outside it, records and verifies a
// manifest of the tree it produced, and transcodes a tar or tar.gz into the
// zstd-compressed tar agents extract faster (transcode.go), refusing with
// the extractor's own checks what the extractor would refuse. The agent
// extracts with it; the controller transcodes with it at push and import.
//
// Every write goes through an os.Root opened on the destination, or on one
// of its directories reached from it root by root (dirs.go), or a
// descriptor of such a directory opened through its root, relative to
// which a file is created by a name of one component (fd.go), so even a
// bug in the checks below cannot place a file outside it. On top of that the
// extractor refuses, with an error naming the entry: absolute names, names
// with "..", symbolic links whose target (followed through the archive's own
// links) leaves the destination, hard links to anything but a regular file
// already extracted, device and fifo files, entries below a symbolic link,
// duplicate entries (other than repeated directories), names longer than the
// system allows, and archives that expand past a byte or entry limit. The
// bytes actually written are counted, not the sizes the headers claim.
//
// Files are created by the extracting user (archive owners are not applied);
// permission bits and modification times are kept; setuid and setgid bits are
// stripped unless allowed.
package archive

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/pgzip"
	"golang.org/x/sys/unix"

	"github.com/ferrydeploy/ferry/shared/ctxio"
)

// Formats the extractor reads.
const (
	FormatTar   = "tar"
	FormatTarGz = "tar.gz"
	// FormatTarZst is the zstd-compressed tar the controller transcodes
	// tar and tar.gz artifacts into.
	FormatTarZst = "tar.zst"
	FormatZip    = "zip"
)

// Limits on names, as Linux enforces them (PATH_MAX, NAME_MAX).
const (
	maxPathLen = 4095
	maxNameLen = 255
	// maxLinkHops bounds symbolic link resolution, as the kernel's ELOOP does.
	maxLinkHops = 40
)

// ErrUnsafe is wrapped by every refusal of a hostile or malformed entry.
var ErrUnsafe = errors.New("unsafe archive")

// Options control one extraction.
type Options struct {
	// Format is FormatTar, FormatTarGz, FormatTarZst, FormatZip, or "" to
	// detect it from the file's first bytes.
	Format string
	// StripComponents drops this many leading path components from every
	// entry; entries with no more components than that are skipped.
	StripComponents int
	// MaxBytes refuses archives that expand past this many bytes (required).
	MaxBytes int64
	// MaxEntries refuses archives with more entries than this (required).
	MaxEntries int64
	// AllowSetuid keeps setuid and setgid bits.
	AllowSetuid bool
	// DryRun reads and checks every entry but writes nothing; dest may be "".
	DryRun bool
	// Name is what errors call the archive, e.g. the artifact's name;
	// default: its path (a cache path means nothing to an operator).
	Name string
	// Hash records the SHA-256 of every regular file written
	// (Result.Hashes), hashed from the bytes as they are written, so the
	// tree need not be read again to be hashed.
	Hash bool
}

// Result summarizes an extraction.
type Result struct {
	Format  string
	Entries int64 // entries extracted (after strip_components)
	Bytes   int64 // bytes of regular file content written
	// Hashes maps the path of every regular file written (relative,
	// "/"-separated, as a Manifest's entries) to its SHA-256 in hex, with
	// Options.Hash; nil otherwise.
	Hashes map[string]string
}

// Extract extracts the archive file src into the directory dest, which
// must exist (it is normally a fresh, empty staging directory).
func Extract(ctx context.Context, src, dest string, opts Options) (Result, error) {
	name := src
	if opts.Name != "" {
		name = opts.Name
	}
	x, done, err := newExtractor(ctx, name, dest, opts)
	if err != nil {
		return Result{}, err
	}
	defer done()
	f, err := os.Open(src)
	if err != nil {
		return Result{}, fmt.Errorf("extract: %w", err)
	}
	defer func() { _ = f.Close() }() // read-only
	st, err := f.Stat()
	if err != nil {
		return Result{}, fmt.Errorf("extract: %w", err)
	}
	format := opts.Format
	if format == "" {
		format, err = Detect(f)
		if err != nil {
			return Result{}, fmt.Errorf("extract %s: %w", name, err)
		}
	}
	if format == FormatZip {
		return x.run(name, format, func() error {
			zr, err := zip.NewReader(f, st.Size())
			if err != nil {
				return fmt.Errorf("%w: not a zip file: %w", ErrUnsafe, err)
			}
			return x.zip(zr)
		})
	}
	return x.stream(name, format, f)
}

// ErrNotStreamable: ExtractStream found a zip, which is read from its
// end: extract the complete file with Extract.
var ErrNotStreamable = errors.New("a zip archive cannot be extracted from a stream")

// ExtractStream extracts a tar, tar.gz or tar.zst archive read from r into
// dest, as Extract does; r is read once, front to back, so it may be a
// file still being written (a download). Without opts.Format the format
// is detected from the first bytes.
func ExtractStream(ctx context.Context, r io.Reader, dest string, opts Options) (Result, error) {
	name := opts.Name
	if name == "" {
		name = "archive"
	}
	format := opts.Format
	if format == "" {
		br := bufio.NewReaderSize(r, 1<<20)
		head, _ := br.Peek(512) // a shorter archive shows all it has; a read error recurs below
		var err error
		if format, err = detect(head); err != nil {
			return Result{}, fmt.Errorf("extract %s: %w", name, err)
		}
		r = br
	}
	if format == FormatZip {
		return Result{}, ErrNotStreamable
	}
	x, done, err := newExtractor(ctx, name, dest, opts)
	if err != nil {
		return Result{}, err
	}
	defer done()
	return x.stream(name, format, r)
}

// newExtractor checks opts and opens dest (unless a dry run).
func newExtractor(ctx context.Context, name, dest string, opts Options) (*extractor, func(), error) {
	if opts.MaxBytes <= 0 || opts.MaxEntries <= 0 {
		return nil, nil, fmt.Errorf("extract %s: MaxBytes and MaxEntries must be positive", name)
	}
	if opts.StripComponents < 0 {
		return nil, nil, fmt.Errorf("extract %s: negative strip_components", name)
	}
	x := &extractor{ctx: ctx, opts: opts, seen: map[string]kind{}, links: map[string]string{}, buf: make([]byte, 256<<10)}
	if !opts.DryRun {
		if opts.Hash {
			x.hashes = map[string]string{}
		}
		root, err := os.OpenRoot(dest)
		if err != nil {
			return nil, nil, fmt.Errorf("extract %s: open destination: %w", name, err)
		}
		x.root, x.tree, x.umask = root, newDirCache(root), currentUmask()
	}
	return x, func() {
		x.stopWriters()
		if x.root != nil {
			x.tree.close()
			_ = x.root.Close() // each file written is closed and checked on its own
		}
	}, nil
}

// stream extracts a tar stream, compressed as format says, from r.
func (x *extractor) stream(name, format string, r io.Reader) (Result, error) {
	switch format {
	case FormatTar:
		return x.run(name, format, func() error { return x.tar(bufio.NewReaderSize(r, 1<<20)) })
	case FormatTarGz, "tgz":
		return x.run(name, FormatTarGz, func() error {
			zr, err := pgzip.NewReaderN(bufio.NewReaderSize(r, 1<<20), 1<<20, 8)
			if err != nil {
				return fmt.Errorf("%w: not gzip: %w", ErrUnsafe, err)
			}
			// Close stops the read-ahead. What it can report is the state
			// of blocks read ahead past the tar's end, which vary from run
			// to run; corruption the entries hit failed x.tar already.
			defer func() { _ = zr.Close() }()
			return x.tar(zr)
		})
	case FormatTarZst:
		return x.run(name, format, func() error {
			zr, err := newZstdReader(r)
			if err != nil {
				return fmt.Errorf("%w: not zstd: %w", ErrUnsafe, err)
			}
			defer zr.Close()
			return x.tar(zr)
		})
	}
	return Result{}, fmt.Errorf("extract %s: unknown archive format %q; use tar, tar.gz or zip", name, format)
}

// run reads the archive's entries with read, then finishes the tree: the
// queued files written, the links checked and created, the directories'
// modes and times set.
func (x *extractor) run(name, format string, read func() error) (Result, error) {
	err := read()
	if ferr := x.flush(); err == nil {
		err = ferr
	}
	if err == nil {
		err = x.checkLinks()
	}
	if err == nil {
		err = x.createLinks()
	}
	if err == nil {
		err = x.finishDirs()
	}
	if err != nil {
		return Result{}, fmt.Errorf("extract %s: %w", name, err)
	}
	return Result{Format: format, Entries: x.entries, Bytes: x.bytes, Hashes: x.hashes}, nil
}

// Detect names the format of an archive from its first bytes; the file
// offset is restored.
func Detect(f io.ReadSeeker) (string, error) {
	var head [512]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("detect format: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("detect format: %w", err)
	}
	return detect(head[:n])
}

// detect names the format from an archive's first bytes (up to 512).
func detect(h []byte) (string, error) {
	n := len(h)
	switch {
	case bytes.HasPrefix(h, []byte{0x1f, 0x8b}):
		return FormatTarGz, nil
	case bytes.HasPrefix(h, zstdMagic):
		return FormatTarZst, nil
	case bytes.HasPrefix(h, []byte("PK\x03\x04")), bytes.HasPrefix(h, []byte("PK\x05\x06")):
		return FormatZip, nil
	case n >= 262 && bytes.HasPrefix(h[257:], []byte("ustar")):
		return FormatTar, nil
	}
	return "", fmt.Errorf("%w: not a tar, tar.gz or zip file; set the step's format if it is one", ErrUnsafe)
}

type kind uint8

const (
	kindDir kind = iota + 1
	kindImplicitDir
	kindFile
	kindSymlink
	kindHardlink
)

type dirMeta struct {
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	ctx   context.Context
	opts  Options
	root  *os.Root  // nil in dry-run mode
	tree  *dirCache // root's directories; nil in dry-run mode
	buf   []byte
	seen  map[string]kind
	links map[string]string // symlink path -> target

	jobs    chan writeJob // small files for the writers
	pool    sync.Pool
	pending sync.WaitGroup // queued, not yet written
	workers sync.WaitGroup
	errMu   sync.Mutex
	werr    error             // first writer error
	hashes  map[string]string // with opts.Hash; under errMu
	// timesByName: file times cannot be set through the open file here.
	timesByName atomic.Bool
	// umask is the process's umask as the extraction started
	// (currentUmask), -1 if unknown.
	umask   int
	dirs    map[string]dirMeta
	total   int64 // entries read, stripped ones included
	entries int64 // entries extracted
	bytes   int64
}

// entryName turns an archive name into a clean relative path, applying
// strip_components. skip is true for entries stripped away entirely.
func (x *extractor) entryName(name string) (rel string, skip bool, err error) {
	if len(name) > maxPathLen {
		return "", false, fmt.Errorf("%w: entry name of %d bytes is longer than the %d the system allows", ErrUnsafe, len(name), maxPathLen)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", false, fmt.Errorf("%w: entry %q: name contains a NUL byte", ErrUnsafe, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", false, fmt.Errorf("%w: entry %q: absolute path", ErrUnsafe, name)
	}
	parts := make([]string, 0, 8)
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", false, fmt.Errorf("%w: entry %q: path contains \"..\"", ErrUnsafe, name)
		}
		if len(p) > maxNameLen {
			return "", false, fmt.Errorf("%w: entry %q: a path component is longer than %d bytes", ErrUnsafe, trunc(name), maxNameLen)
		}
		parts = append(parts, p)
	}
	if len(parts) <= x.opts.StripComponents {
		return "", true, nil
	}
	return strings.Join(parts[x.opts.StripComponents:], "/"), false, nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// admit counts an entry and checks that it may be created at rel.
func (x *extractor) admit(rel string, k kind) error {
	if err := x.count(); err != nil {
		return err
	}
	x.entries++
	if prev, ok := x.seen[rel]; ok {
		if k == kindDir && (prev == kindDir || prev == kindImplicitDir) {
			return nil
		}
		return fmt.Errorf("%w: entry %q appears twice in the archive; refusing an ambiguous archive", ErrUnsafe, rel)
	}
	// Every parent must be a directory of the archive, never one of its
	// links: writing below a link would place the entry somewhere else.
	for i := 0; i < len(rel); i++ {
		if rel[i] != '/' {
			continue
		}
		parent := rel[:i]
		switch x.seen[parent] {
		case 0:
			x.seen[parent] = kindImplicitDir
			if x.root != nil {
				if err := x.tree.mkdir(parent, 0o755); err != nil {
					return fmt.Errorf("entry %q: %w", rel, err)
				}
			}
		case kindDir, kindImplicitDir:
		default:
			return fmt.Errorf("%w: entry %q lies below %q, which is not a directory", ErrUnsafe, rel, parent)
		}
	}
	x.seen[rel] = k
	return nil
}

func (x *extractor) mode(m fs.FileMode) fs.FileMode {
	perm := m & (fs.ModePerm | fs.ModeSticky | fs.ModeSetuid | fs.ModeSetgid)
	if !x.opts.AllowSetuid {
		perm &^= fs.ModeSetuid | fs.ModeSetgid
	}
	return perm
}

func (x *extractor) dir(rel string, mode fs.FileMode, mtime time.Time) error {
	if err := x.admit(rel, kindDir); err != nil {
		return err
	}
	if x.dirs == nil {
		x.dirs = map[string]dirMeta{}
	}
	x.dirs[rel] = dirMeta{mode: x.mode(mode), mtime: mtime}
	if x.root == nil {
		return nil
	}
	if err := x.tree.mkdir(rel, 0o700); err != nil {
		return fmt.Errorf("entry %q: %w", rel, err)
	}
	return nil
}

func (x *extractor) file(rel string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error {
	if err := x.admit(rel, kindFile); err != nil {
		return err
	}
	remaining := x.opts.MaxBytes - x.bytes
	if size > remaining {
		return x.tooBig()
	}
	if x.root != nil && size <= smallFile {
		return x.smallFile(rel, mode, mtime, size, r)
	}
	w := io.Discard
	fd := -1
	var dir *os.Root
	var h hash.Hash
	if x.root != nil {
		var release func()
		var err error
		fd, dir, release, err = x.create(rel, mode)
		if err != nil {
			return err
		}
		defer release()
		w = fdWriter(fd)
		if x.hashes != nil {
			h = sha256.New()
			w = io.MultiWriter(w, h)
		}
	}
	n, err := io.CopyBuffer(w, ctxio.NewReader(x.ctx, io.LimitReader(r, remaining+1)), x.buf)
	x.bytes += n
	if err == nil && x.bytes > x.opts.MaxBytes {
		err = x.tooBig()
	}
	if err != nil {
		if fd >= 0 {
			_ = unix.Close(fd) // err says what went wrong; the staging tree is discarded
		}
		if errors.Is(err, ErrUnsafe) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("entry %q: %w", rel, err)
	}
	if fd < 0 {
		return nil
	}
	if h != nil {
		x.setHash(rel, hex.EncodeToString(h.Sum(nil)))
	}
	return x.finishFile(fd, dir, rel, mode, mtime)
}

func (x *extractor) setHash(rel, sum string) {
	x.errMu.Lock()
	x.hashes[rel] = sum
	x.errMu.Unlock()
}

// create creates the regular file rel, opened for writing, in its
// directory (dir, a root, and the descriptor of that directory); release
// lets the directory go once the file is finished. The file is created
// with the permission bits of mode, so that finishFile need not change
// them where the umask left them whole.
func (x *extractor) create(rel string, mode fs.FileMode) (fd int, dir *os.Root, release func(), err error) {
	dir, dirfd, release, err := x.tree.openFD(path.Dir(rel))
	if err != nil {
		return -1, nil, nil, fmt.Errorf("entry %q: %w", rel, err)
	}
	// The name is one component, checked by entryName: no "/", "." or
	// "..". O_EXCL creates it or fails, never following a link there.
	fd, err = createAt(dirfd, path.Base(rel), unixMode(x.mode(mode).Perm()))
	if err != nil {
		release()
		return -1, nil, nil, fmt.Errorf("entry %q: %w", rel, &fs.PathError{Op: "create", Path: rel, Err: err})
	}
	return fd, dir, release, nil
}

// finishFile sets the mode and time of a written file fd, created in dir,
// and closes it. The mode is set unless the file was created with it (no
// special bits, none the umask took away); the times through the open
// file where the system can, else by name once it is closed.
func (x *extractor) finishFile(fd int, dir *os.Root, rel string, mode fs.FileMode, mtime time.Time) error {
	var err error
	perm := x.mode(mode)
	if x.umask < 0 || perm != perm.Perm() || uint32(perm)&uint32(x.umask) != 0 { //nolint:gosec // umask is 0 to 0777 here
		err = unix.Fchmod(fd, unixMode(perm))
	}
	byName := !mtime.IsZero()
	if err == nil && byName && !x.timesByName.Load() {
		var ok bool
		ok, err = setTimesFD(fd, mtime)
		byName = !ok
		if err == nil && !ok {
			x.timesByName.Store(true) // not supported: by name from now on
		}
	}
	if err != nil {
		_ = unix.Close(fd) // err says what went wrong; the staging tree is discarded
		return fmt.Errorf("entry %q: %w", rel, err)
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("entry %q: close: %w", rel, err)
	}
	if byName {
		// In the file's own directory, not following a link: the file was
		// created there, O_EXCL, a moment ago.
		if err := dir.Chtimes(path.Base(rel), mtime, mtime); err != nil {
			return fmt.Errorf("entry %q: %w", rel, inTree(err, rel))
		}
	}
	return nil
}

// Small files are read into memory by the decoding goroutine and written
// by a few writer goroutines: creating files is where extraction waits on
// the file system, and several creates in flight hide that latency.
const (
	smallFile = 1 << 20
	writers   = 4
)

type writeJob struct {
	rel   string
	mode  fs.FileMode
	mtime time.Time
	data  *[]byte
}

func (x *extractor) smallFile(rel string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error {
	if err := x.writeErr(); err != nil {
		return err
	}
	if x.jobs == nil {
		x.jobs = make(chan writeJob, 2*writers)
		x.pool.New = func() any { b := make([]byte, 0, 64<<10); return &b }
		for w := 0; w < writers; w++ {
			x.workers.Add(1)
			go x.writer()
		}
	}
	bp := x.pool.Get().(*[]byte)
	b := (*bp)[:0]
	if int64(cap(b)) < size+1 {
		b = make([]byte, 0, size+1)
	}
	// One byte more than the header says, to catch an entry that lies.
	n, err := io.ReadFull(r, b[:size+1])
	b = b[:n]
	*bp = b
	x.bytes += int64(n)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) && int64(n) == size, errors.Is(err, io.EOF) && size == 0:
	case err == nil:
		x.pool.Put(bp)
		return fmt.Errorf("%w: entry %q holds more bytes than its header says", ErrUnsafe, rel)
	default:
		x.pool.Put(bp)
		return fmt.Errorf("entry %q: %w", rel, err)
	}
	if x.bytes > x.opts.MaxBytes {
		x.pool.Put(bp)
		return x.tooBig()
	}
	x.pending.Add(1)
	x.jobs <- writeJob{rel: rel, mode: mode, mtime: mtime, data: bp}
	return nil
}

func (x *extractor) writer() {
	defer x.workers.Done()
	for j := range x.jobs {
		if x.writeErr() == nil {
			if err := x.writeSmall(j); err != nil {
				x.errMu.Lock()
				if x.werr == nil {
					x.werr = err
				}
				x.errMu.Unlock()
			}
		}
		x.pool.Put(j.data)
		x.pending.Done()
	}
}

func (x *extractor) writeSmall(j writeJob) error {
	fd, dir, release, err := x.create(j.rel, j.mode)
	if err != nil {
		return err
	}
	defer release()
	if _, err := fdWriter(fd).Write(*j.data); err != nil {
		_ = unix.Close(fd) // err says what went wrong; the staging tree is discarded
		return fmt.Errorf("entry %q: write: %w", j.rel, err)
	}
	if x.hashes != nil {
		sum := sha256.Sum256(*j.data)
		x.setHash(j.rel, hex.EncodeToString(sum[:]))
	}
	return x.finishFile(fd, dir, j.rel, j.mode, j.mtime)
}

func (x *extractor) writeErr() error {
	x.errMu.Lock()
	defer x.errMu.Unlock()
	return x.werr
}

// flush waits until every queued file is written and returns the first
// write error.
func (x *extractor) flush() error {
	x.pending.Wait()
	return x.writeErr()
}

// stopWriters ends the writer goroutines; Extract defers it.
func (x *extractor) stopWriters() {
	if x.jobs != nil {
		close(x.jobs)
		x.workers.Wait()
	}
}

func (x *extractor) tooBig() error {
	return &limitError{fmt.Sprintf("expands past %d bytes; raise the step's max_bytes if this is expected", x.opts.MaxBytes)}
}

// limitError refuses an archive past a byte or entry limit.
type limitError struct{ msg string }

func (e *limitError) Error() string { return ErrUnsafe.Error() + ": " + e.msg }
func (e *limitError) Unwrap() error { return ErrUnsafe }

func (x *extractor) symlink(rel, target string) error {
	if err := x.admit(rel, kindSymlink); err != nil {
		return err
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 || len(target) > maxPathLen {
		return fmt.Errorf("%w: symbolic link %q has an empty, overlong or NUL-containing target", ErrUnsafe, rel)
	}
	if strings.HasPrefix(target, "/") {
		return fmt.Errorf("%w: symbolic link %q -> %q: absolute targets point outside the destination", ErrUnsafe, rel, target)
	}
	// A first, lexical check; checkLinks follows chains once all links are known.
	if t := path.Join(path.Dir(rel), target); t == ".." || strings.HasPrefix(t, "../") {
		return fmt.Errorf("%w: symbolic link %q -> %q points outside the destination", ErrUnsafe, rel, target)
	}
	// Links are created after every entry is known and every chain is
	// checked, so even a failed extraction never leaves an escaping link.
	x.links[rel] = target
	return nil
}

func (x *extractor) hardlink(rel, linkname string) error {
	target, skip, err := x.entryName(linkname)
	if err != nil {
		return fmt.Errorf("hard link %q: %w", rel, err)
	}
	if skip || x.seen[target] != kindFile {
		return fmt.Errorf("%w: hard link %q -> %q: the target must be a regular file extracted earlier from the archive", ErrUnsafe, rel, linkname)
	}
	if err := x.admit(rel, kindHardlink); err != nil {
		return err
	}
	if x.root == nil {
		return nil
	}
	if err := x.flush(); err != nil { // the target may still be queued
		return err
	}
	if err := x.root.Link(target, rel); err != nil {
		return fmt.Errorf("entry %q: %w", rel, err)
	}
	if x.hashes != nil {
		x.errMu.Lock()
		x.hashes[rel] = x.hashes[target] // flushed above: the target's is set
		x.errMu.Unlock()
	}
	return nil
}

// checkLinks follows every symbolic link through the archive's own links,
// as the kernel would, and refuses any that leaves the destination. It runs
// after extraction so the order of entries does not matter.
func (x *extractor) checkLinks() error {
	names := make([]string, 0, len(x.links))
	for l := range x.links {
		names = append(names, l)
	}
	sort.Strings(names)
	for _, l := range names {
		if err := x.resolveInside(l); err != nil {
			return fmt.Errorf("%w: symbolic link %q -> %q: %w", ErrUnsafe, l, x.links[l], err)
		}
	}
	return nil
}

func (x *extractor) createLinks() error {
	if x.root == nil {
		return nil
	}
	for l, target := range x.links {
		err := x.tree.in(l, func(dir *os.Root, name string) error { return dir.Symlink(target, name) })
		if err != nil {
			return fmt.Errorf("entry %q: %w", l, err)
		}
	}
	return nil
}

func (x *extractor) resolveInside(link string) error {
	// pending holds the components still to walk; stack the resolved ones.
	pending := strings.Split(link, "/")
	var stack []string
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return errors.New("points outside the destination")
			}
			stack = stack[:len(stack)-1]
			continue
		}
		cur := strings.Join(append(stack, c), "/")
		target, ok := x.links[cur]
		if !ok {
			stack = append(stack, c)
			continue
		}
		hops++
		if hops > maxLinkHops {
			return errors.New("too many levels of symbolic links")
		}
		if strings.HasPrefix(target, "/") {
			return errors.New("absolute target")
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	return nil
}

// finishDirs applies directory modes and times, deepest first, now that
// nothing more is written inside them.
func (x *extractor) finishDirs() error {
	if x.root == nil {
		return nil
	}
	names := make([]string, 0, len(x.dirs))
	for d := range x.dirs {
		names = append(names, d)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] > names[j] })
	for _, d := range names {
		m := x.dirs[d]
		err := x.tree.in(d, func(dir *os.Root, name string) error {
			if err := dir.Chmod(name, m.mode); err != nil {
				return err
			}
			if m.mtime.IsZero() {
				return nil
			}
			return dir.Chtimes(name, m.mtime, m.mtime)
		})
		if err != nil {
			return fmt.Errorf("directory %q: %w", d, err)
		}
	}
	return nil
}

func (x *extractor) tar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: read tar: %w", ErrUnsafe, err)
		}
		rel, skip, err := x.entryName(h.Name)
		if err != nil {
			return err
		}
		if skip {
			if err := x.count(); err != nil {
				return err
			}
			continue
		}
		mode := fs.FileMode(h.Mode & 0o777)
		if h.Mode&04000 != 0 {
			mode |= fs.ModeSetuid
		}
		if h.Mode&02000 != 0 {
			mode |= fs.ModeSetgid
		}
		if h.Mode&01000 != 0 {
			mode |= fs.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = x.dir(rel, mode, h.ModTime)
		case tar.TypeReg, tar.TypeCont: // tar.Reader reports the old TypeRegA as TypeReg
			err = x.file(rel, mode, h.ModTime, h.Size, tr)
		case tar.TypeSymlink:
			err = x.symlink(rel, h.Linkname)
		case tar.TypeLink:
			err = x.hardlink(rel, h.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			err = fmt.Errorf("%w: entry %q is a device file", ErrUnsafe, rel)
		case tar.TypeFifo:
			err = fmt.Errorf("%w: entry %q is a fifo", ErrUnsafe, rel)
		default:
			err = fmt.Errorf("%w: entry %q has unsupported tar type %q", ErrUnsafe, rel, h.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

// count counts an entry, stripped ones included (so a bomb of stripped
// entries is refused too), against the entry limit.
func (x *extractor) count() error {
	x.total++
	if x.total > x.opts.MaxEntries {
		return &limitError{fmt.Sprintf("more than %d entries; raise the step's max_entries if this is expected", x.opts.MaxEntries)}
	}
	return x.ctx.Err()
}

func (x *extractor) zip(zr *zip.Reader) error {
	if int64(len(zr.File)) > x.opts.MaxEntries {
		return fmt.Errorf("%w: more than %d entries; raise the step's max_entries if this is expected", ErrUnsafe, x.opts.MaxEntries)
	}
	for _, zf := range zr.File {
		rel, skip, err := x.entryName(zf.Name)
		if err != nil {
			return err
		}
		if skip {
			if err := x.count(); err != nil {
				return err
			}
			continue
		}
		m := zf.Mode()
		mtime := zf.Modified
		switch {
		case m.IsDir():
			err = x.dir(rel, m, mtime)
		case m&fs.ModeSymlink != 0:
			err = x.zipSymlink(rel, zf)
		case m.IsRegular():
			remaining := x.opts.MaxBytes - x.bytes
			if remaining < 0 || zf.UncompressedSize64 > uint64(remaining) {
				return x.tooBig()
			}
			var rc io.ReadCloser
			rc, err = zf.Open()
			if err != nil {
				return fmt.Errorf("%w: entry %q: %w", ErrUnsafe, rel, err)
			}
			err = x.file(rel, m, mtime, int64(zf.UncompressedSize64), rc) //nolint:gosec // at most remaining, an int64, as checked above
			// Read to its end, where zip checks the CRC: Close has
			// nothing to add.
			_ = rc.Close()
		case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			err = fmt.Errorf("%w: entry %q is a device file", ErrUnsafe, rel)
		case m&fs.ModeNamedPipe != 0:
			err = fmt.Errorf("%w: entry %q is a fifo", ErrUnsafe, rel)
		default:
			err = fmt.Errorf("%w: entry %q has unsupported mode %v", ErrUnsafe, rel, m)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) zipSymlink(rel string, zf *zip.File) error {
	rc, err := zf.Open()
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrUnsafe, rel, err)
	}
	defer func() { _ = rc.Close() }() // read-only
	target, err := io.ReadAll(io.LimitReader(rc, maxPathLen+1))
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrUnsafe, rel, err)
	}
	return x.symlink(rel, string(target))
}
