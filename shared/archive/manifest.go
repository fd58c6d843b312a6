package archive

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Entry is one file system object of an extracted tree.
type Entry struct {
	Path   string // relative, "/"-separated; "." is the tree's root
	Type   byte   // 'd' directory, 'f' regular file, 'l' symbolic link
	Mode   fs.FileMode
	Size   int64 // regular files only
	Mtime  int64 // nanoseconds; not compared for directories
	UID    uint32
	GID    uint32
	Target string // symbolic links only
	// Hash is the SHA-256 of a regular file's content, hex; "" when the
	// manifest was recorded without hashes (before they were added).
	Hash string
}

// Manifest describes a tree as it was when recorded, in walk order. It is
// what lets the installer tell "this version is installed and intact"
// without hashing every byte: any added, removed, retyped or rewritten
// entry changes a type, mode, size, time, owner or link target.
type Manifest []Entry

// Scan records the tree under dir.
func Scan(dir string) (Manifest, error) {
	var m Manifest
	err := walk(dir, func(e Entry) error {
		m = append(m, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	return m, nil
}

// ScanHashed records the tree under dir with the hash of every regular
// file, for a full check later (Diff with full).
func ScanHashed(dir string) (Manifest, error) {
	m, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	return m, m.AddHashes(dir)
}

// SetHashes records the hashes an extraction with Options.Hash computed
// (Result.Hashes) in the manifest of the tree it wrote; a regular file it
// has none for is left to AddHashes.
func (m Manifest) SetHashes(hashes map[string]string) {
	for k := range m {
		if m[k].Type == 'f' {
			if h, ok := hashes[m[k].Path]; ok {
				m[k].Hash = h
			}
		}
	}
}

// Hashed reports whether every regular file of m has its hash.
func (m Manifest) Hashed() bool {
	for _, e := range m {
		if e.Type == 'f' && e.Hash == "" {
			return false
		}
	}
	return true
}

// AddHashes hashes the regular files of the tree under dir that m has
// no hash for, spread over the CPUs.
func (m Manifest) AddHashes(dir string) error {
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range min(runtime.NumCPU(), 8) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				h, err := hashFile(filepath.Join(dir, filepath.FromSlash(m[k].Path)))
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				m[k].Hash = h
			}
		}()
	}
	for k := range m {
		if m[k].Type == 'f' && m[k].Hash == "" {
			work <- k
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("hash %s: %w", dir, err)
	default:
	}
	return nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }() // read-only
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Diff compares the tree under dir with m and returns how many entries
// differ (changed, missing, or not in m) and the first limit of them, each
// as "PATH: what", PATH joined to dir. Cheap by default (types, modes,
// owners, sizes, times, link targets); full also hashes every regular
// file m has a hash for.
func (m Manifest) Diff(dir string, full bool, limit int) (int, []string, error) {
	if _, err := os.Lstat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return len(m), []string{dir + ": missing"}, nil
		}
		return 0, nil, err
	}
	var n int
	var examples []string
	report := func(path, what string) {
		n++
		if len(examples) < limit {
			examples = append(examples, filepath.Join(dir, filepath.FromSlash(path))+": "+what)
		}
	}
	want := make(map[string]Entry, len(m))
	for _, e := range m {
		want[e.Path] = e
	}
	seen := make(map[string]bool, len(m))
	err := walk(dir, func(e Entry) error {
		w, ok := want[e.Path]
		if !ok {
			report(e.Path, "not part of the installed tree")
			return nil
		}
		seen[e.Path] = true
		if d := diff(w, e); d != "" {
			report(e.Path, d)
			return nil
		}
		if full && w.Type == 'f' && w.Hash != "" {
			h, err := hashFile(filepath.Join(dir, filepath.FromSlash(e.Path)))
			if err != nil {
				return err
			}
			if h != w.Hash {
				report(e.Path, "content changed (same size and time)")
			}
		}
		return nil
	})
	if err != nil {
		return n, examples, fmt.Errorf("check %s: %w", dir, err)
	}
	for _, e := range m {
		if !seen[e.Path] {
			report(e.Path, "missing")
		}
	}
	return n, examples, nil
}

// Verify reports the first difference between the tree under dir and m,
// or nil when the tree is intact.
func (m Manifest) Verify(dir string) error {
	i := 0
	err := walk(dir, func(e Entry) error {
		if i >= len(m) {
			return fmt.Errorf("%s: not part of the installed tree", e.Path)
		}
		want := m[i]
		i++
		if want.Path != e.Path {
			if want.Path < e.Path {
				return fmt.Errorf("%s: missing", want.Path)
			}
			return fmt.Errorf("%s: not part of the installed tree", e.Path)
		}
		if d := diff(want, e); d != "" {
			return fmt.Errorf("%s: %s", e.Path, d)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s changed: %w", dir, err)
	}
	if i < len(m) {
		return fmt.Errorf("%s changed: %s: missing", dir, m[i].Path)
	}
	return nil
}

func diff(want, got Entry) string {
	switch {
	case want.Type != got.Type:
		return fmt.Sprintf("type %c, want %c", got.Type, want.Type)
	case want.Mode != got.Mode:
		return fmt.Sprintf("mode %v, want %v", got.Mode, want.Mode)
	case want.UID != got.UID || want.GID != got.GID:
		return fmt.Sprintf("owner %d:%d, want %d:%d", got.UID, got.GID, want.UID, want.GID)
	case want.Type == 'f' && want.Size != got.Size:
		return fmt.Sprintf("size %d, want %d", got.Size, want.Size)
	case want.Type == 'f' && want.Mtime != got.Mtime:
		return "modified since install"
	case want.Type == 'l' && want.Target != got.Target:
		return fmt.Sprintf("link target %q, want %q", got.Target, want.Target)
	}
	return ""
}

// walk visits dir and everything below it in lexical order without
// following symbolic links. Each directory is opened (not following a
// link) and its entries are looked up relative to it, rather than by a
// path the kernel walks from the top each time: a tree is walked at every
// install (Scan) and every drift check (Diff).
func walk(dir string, fn func(Entry) error) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: dir, Err: err}
	}
	e, err := entryOf(".", &st, func() (string, error) { return os.Readlink(dir) })
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if err := fn(e); err != nil || e.Type != 'd' {
		return err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return walkDir(dir, fd, "", fn)
}

// walkDir visits the entries of the directory open as fd (dir/rel; ""
// for dir itself) and below, and closes fd.
func walkDir(dir string, fd int, rel string, fn func(Entry) error) error {
	d := os.NewFile(uintptr(fd), filepath.Join(dir, rel))
	defer func() { _ = d.Close() }() // read-only
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "lstat", Path: filepath.Join(dir, p), Err: err}
		}
		e, err := entryOf(p, &st, func() (string, error) { return readlinkAt(fd, name) })
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(dir, p), err)
		}
		if err := fn(e); err != nil {
			return err
		}
		if e.Type != 'd' {
			continue
		}
		child, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return &fs.PathError{Op: "open", Path: filepath.Join(dir, p), Err: err}
		}
		if err := walkDir(dir, child, p, fn); err != nil {
			return err
		}
	}
	return nil
}

// entryOf makes the Entry at path p of a file's status; target reads a
// link's.
func entryOf(p string, st *unix.Stat_t, target func() (string, error)) (Entry, error) {
	mode := st.Mode
	e := Entry{Path: p, Mode: fs.FileMode(mode & 0o777), UID: st.Uid, GID: st.Gid}
	if mode&unix.S_ISUID != 0 {
		e.Mode |= fs.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		e.Mode |= fs.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		e.Mode |= fs.ModeSticky
	}
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = 'd'
	case unix.S_IFREG:
		e.Type, e.Size, e.Mtime = 'f', st.Size, st.Mtim.Nano()
	case unix.S_IFLNK:
		e.Type = 'l'
		t, err := target()
		if err != nil {
			return e, err
		}
		e.Target = t
	case unix.S_IFIFO:
		return e, errors.New("unexpected fifo")
	case unix.S_IFSOCK:
		return e, errors.New("unexpected socket")
	case unix.S_IFCHR, unix.S_IFBLK:
		return e, errors.New("unexpected device file")
	default:
		return e, fmt.Errorf("unexpected file type %o", mode&unix.S_IFMT)
	}
	return e, nil
}

// readlinkAt reads the target of the link name in the directory fd.
func readlinkAt(fd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(fd, name, b)
		if err != nil {
			return "", &fs.PathError{Op: "readlinkat", Path: name, Err: err}
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

// Encode renders the manifest as text, one entry a line: type, octal
// mode, size, mtime, uid, gid, quoted path, quoted target and, when
// recorded, the hash. It appends with strconv rather than formatting with
// fmt: every install encodes its tree's (some 17000 lines for a Go
// toolchain) before the tree is switched in.
func (m Manifest) Encode() []byte {
	b := make([]byte, 0, len(m)*160)
	for _, e := range m {
		b = append(b, e.Type, ' ')
		b = strconv.AppendUint(b, uint64(uint32(e.Mode)), 8)
		b = append(b, ' ')
		b = strconv.AppendInt(b, e.Size, 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, e.Mtime, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.GID), 10)
		b = append(b, ' ')
		b = strconv.AppendQuote(b, e.Path)
		b = append(b, ' ')
		b = strconv.AppendQuote(b, e.Target)
		if e.Hash != "" {
			b = append(b, ' ')
			b = append(b, e.Hash...)
		}
		b = append(b, '\n')
	}
	return b
}

// DecodeManifest parses what Encode wrote. It parses with strconv, not
// fmt's scanner: an agent decodes every installed tree's manifest (a line
// per file, some 17000 for a Go toolchain) after each job and at every
// drift check.
func DecodeManifest(data []byte) (Manifest, error) {
	m := make(Manifest, 0, bytes.Count(data, []byte{'\n'}))
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		e, err := decodeEntry(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		m = append(m, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if len(m) == 0 {
		return nil, errors.New("manifest: empty")
	}
	return m, nil
}

var errMalformed = errors.New("malformed")

// decodeEntry parses one line of Encode's: type, octal mode, size, mtime,
// uid, gid, quoted path, quoted target and an optional hash.
func decodeEntry(text string) (Entry, error) {
	var e Entry
	f := strings.SplitN(text, " ", 7)
	if len(f) != 7 || len(f[0]) != 1 {
		return e, errMalformed
	}
	e.Type = f[0][0]
	mode, err1 := strconv.ParseUint(f[1], 8, 32)
	size, err2 := strconv.ParseInt(f[2], 10, 64)
	mtime, err3 := strconv.ParseInt(f[3], 10, 64)
	uid, err4 := strconv.ParseUint(f[4], 10, 32)
	gid, err5 := strconv.ParseUint(f[5], 10, 32)
	if errors.Join(err1, err2, err3, err4, err5) != nil {
		return e, errMalformed
	}
	e.Mode, e.Size, e.Mtime = fs.FileMode(mode), size, mtime
	e.UID, e.GID = uint32(uid), uint32(gid) // parsed as 32 bits
	rest := f[6]
	p, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return e, errMalformed
	}
	rest = strings.TrimPrefix(rest[len(p):], " ")
	t, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return e, errMalformed
	}
	// An optional hash follows (manifests recorded before hashes have none).
	if h := strings.TrimPrefix(rest[len(t):], " "); h != "" {
		if len(h) != sha256.Size*2 || strings.Trim(h, "0123456789abcdef") != "" {
			return e, errors.New("malformed hash")
		}
		e.Hash = h
	}
	e.Path, _ = strconv.Unquote(p)
	e.Target, _ = strconv.Unquote(t)
	return e, nil
}
