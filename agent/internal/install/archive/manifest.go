package archive

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
// following symbolic links.
func walk(dir string, fn func(Entry) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := Entry{Path: filepath.ToSlash(rel), Mode: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			e.UID, e.GID = st.Uid, st.Gid
		}
		switch {
		case info.IsDir():
			e.Type = 'd'
		case info.Mode().IsRegular():
			e.Type, e.Size, e.Mtime = 'f', info.Size(), info.ModTime().UnixNano()
		case info.Mode()&fs.ModeSymlink != 0:
			e.Type = 'l'
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected file type %v", p, info.Mode().Type())
		}
		return fn(e)
	})
}

// Encode renders the manifest as text, one entry a line.
func (m Manifest) Encode() []byte {
	var b strings.Builder
	for _, e := range m {
		fmt.Fprintf(&b, "%c %o %d %d %d %d %s %s\n", e.Type, uint32(e.Mode), e.Size, e.Mtime, e.UID, e.GID,
			strconv.Quote(e.Path), strconv.Quote(e.Target))
	}
	return []byte(b.String())
}

// DecodeManifest parses what Encode wrote.
func DecodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		var e Entry
		var mode uint32
		var p, t string
		f := strings.SplitN(sc.Text(), " ", 7)
		if len(f) != 7 || len(f[0]) != 1 {
			return nil, fmt.Errorf("manifest line %d: malformed", line)
		}
		e.Type = f[0][0]
		_, err := fmt.Sscanf(strings.Join(f[1:6], " "), "%o %d %d %d %d", &mode, &e.Size, &e.Mtime, &e.UID, &e.GID)
		if err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		e.Mode = fs.FileMode(mode)
		rest := f[6]
		p, err = strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		if t, err = strconv.QuotedPrefix(strings.TrimPrefix(rest[len(p):], " ")); err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		e.Path, _ = strconv.Unquote(p)
		e.Target, _ = strconv.Unquote(t)
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
