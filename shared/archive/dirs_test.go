package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// onRead calls fn at its first read and then reads as empty: between two
// parts of an archive in an io.MultiReader, it acts when the extractor
// has read everything before it.
type onRead struct{ fn func() }

func (o *onRead) Read([]byte) (int, error) {
	if o.fn != nil {
		o.fn()
		o.fn = nil
	}
	return 0, io.EOF
}

// A directory of the tree swapped for a link to outside the destination
// while the archive is extracted: a directory opened already (cached)
// keeps being written where it went, one first opened after the swap
// refuses the link, and nothing lands outside either way.
func TestExtractDirectorySwappedForLinkMidway(t *testing.T) {
	big := file("a/big", strings.Repeat("x", smallFile+1)) // written at once, through a's root
	tests := []struct {
		name   string
		before []ent // a directory entry's mode is set by name at the end, refused once it is a link
		rest   []ent // after the swap
		// written: paths in dest the rest must have reached; refused: the
		// extraction must fail.
		written []string
		refused bool
	}{
		{"open directory", []ent{big}, []ent{file("a/f2", "two"), file("a/sub/f3", "three")}, []string{"a.moved/f2", "a.moved/sub/f3"}, false},
		{"directory not opened yet", []ent{dir("b/"), big}, []ent{file("b/f4", "four")}, nil, true},
		{"directory below one not opened yet", []ent{dir("b/"), big}, []ent{file("b/sub/f5", "five")}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			dest := filepath.Join(tmp, "dest")
			outside := filepath.Join(tmp, "outside")
			for _, d := range []string{dest, outside} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			whole := tarBytes(t, append(append([]ent{}, tc.before...), tc.rest...)...)
			cut := len(tarBytes(t, tc.before...)) - 1024 // without the end-of-archive blocks
			swap := func() {
				for _, d := range []string{"a", "b"} {
					if _, err := os.Stat(filepath.Join(dest, d)); err != nil {
						continue
					}
					if err := os.Rename(filepath.Join(dest, d), filepath.Join(dest, d+".moved")); err != nil {
						t.Error(err)
					}
					if err := os.Symlink(outside, filepath.Join(dest, d)); err != nil {
						t.Error(err)
					}
				}
			}
			r := io.MultiReader(bytes.NewReader(whole[:cut]), &onRead{fn: swap}, bytes.NewReader(whole[cut:]))
			_, err := ExtractStream(context.Background(), r, dest, Options{Format: FormatTar, MaxBytes: 8 << 20, MaxEntries: 100})
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("extraction wrote outside the destination: %d entries there", len(ents))
			}
			switch {
			case tc.refused && err == nil:
				t.Fatal("extraction succeeded through a link out of the destination")
			case !tc.refused && err != nil:
				t.Fatal(err)
			}
			t.Logf("extraction: %v", err)
			for _, p := range tc.written {
				if _, err := os.Stat(filepath.Join(dest, p)); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// More directories than stay open, visited twice over: roots closed to
// make room are opened again, and every file lands where it belongs.
func TestExtractManyDirectories(t *testing.T) {
	var es []ent
	n := 3 * maxOpenDirs
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < n; i++ {
			es = append(es, file(fmt.Sprintf("d%d/e/f%d", i, pass), fmt.Sprint(i, pass)))
		}
	}
	src, parent, dest := setup(t, tarBytes(t, es...))
	o := opts()
	o.MaxEntries = int64(len(es))
	res, err := Extract(context.Background(), src, dest, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != int64(len(es)) {
		t.Errorf("extracted %d entries, want %d", res.Entries, len(es))
	}
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < n; i++ {
			mustRead(t, filepath.Join(dest, fmt.Sprintf("d%d/e/f%d", i, pass)), fmt.Sprint(i, pass))
		}
	}
	assertContained(t, parent, dest)
}

// File times are kept whether they are set through the open file or, on
// a system that cannot, by name.
func TestExtractTimes(t *testing.T) {
	mt := time.Unix(1600000000, 123456789)
	data := tarBytes(t, ent{name: "d/small", typ: tar.TypeReg, mode: 0o644, body: "x", mtime: mt},
		ent{name: "d/big", typ: tar.TypeReg, mode: 0o600, body: strings.Repeat("y", smallFile+1), mtime: mt})
	for _, byName := range []bool{false, true} {
		t.Run(fmt.Sprint("by name ", byName), func(t *testing.T) {
			dest := t.TempDir()
			x, done, err := newExtractor(context.Background(), "test", dest, Options{MaxBytes: 8 << 20, MaxEntries: 10})
			if err != nil {
				t.Fatal(err)
			}
			x.timesByName.Store(byName)
			_, err = x.stream("test", FormatTar, bytes.NewReader(data))
			done()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"d/small", "d/big"} {
				st, err := os.Stat(filepath.Join(dest, p))
				if err != nil || !st.ModTime().Equal(mt) {
					t.Errorf("%s: mtime %v (%v), want %v", p, st.ModTime(), err, mt)
				}
			}
		})
	}
}
