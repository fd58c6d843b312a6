package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ent describes one archive entry for the test builders.
type ent struct {
	name   string
	typ    byte // tar type flag
	mode   int64
	body   string
	link   string
	mtime  time.Time
	zipRaw fs.FileMode // zip: mode to set instead of one derived from typ
}

func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, mode: 0o644, body: body} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) ent {
	return ent{name: name, typ: tar.TypeSymlink, mode: 0o777, link: to}
}
func hardlink(name, to string) ent {
	return ent{name: name, typ: tar.TypeLink, mode: 0o644, link: to}
}

func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		mt := e.mtime
		if mt.IsZero() {
			mt = time.Unix(1700000000, 0)
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: mt, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write header %q: %v", e.name, err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zipBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range ents {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: time.Unix(1700000000, 0)}
		switch {
		case e.zipRaw != 0:
			h.SetMode(e.zipRaw)
		case e.typ == tar.TypeDir:
			h.SetMode(fs.ModeDir | fs.FileMode(e.mode))
			if !strings.HasSuffix(h.Name, "/") {
				h.Name += "/"
			}
		case e.typ == tar.TypeSymlink:
			h.SetMode(fs.ModeSymlink | 0o777)
		default:
			h.SetMode(fs.FileMode(e.mode))
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		body := e.body
		if e.typ == tar.TypeSymlink {
			body = e.link
		}
		if _, err := io.WriteString(w, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// setup writes the archive and returns its path and an empty destination
// inside a parent directory that must stay otherwise empty.
func setup(t testing.TB, data []byte) (src, parent, dest string) {
	t.Helper()
	tmp := t.TempDir()
	src = filepath.Join(tmp, "artifact")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	parent = filepath.Join(tmp, "parent")
	dest = filepath.Join(parent, "dest")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	return src, parent, dest
}

func opts() Options { return Options{MaxBytes: 1 << 20, MaxEntries: 100} }

func TestExtractTree(t *testing.T) {
	ents := []ent{
		dir("go/"),
		dir("go/bin/"),
		{name: "go/bin/go", typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\necho go1.20.3\n"},
		{name: "go/bin/suid", typ: tar.TypeReg, mode: 0o4755, body: "x"},
		{name: "go/ro/", typ: tar.TypeDir, mode: 0o555},
		file("go/ro/file", "read only dir content"),
		file("go/VERSION", "go1.20.3"),
		file("go/implicit/parent/file", "no dir entries for my parents"),
		symlink("go/bin/gofmt", "go"),
		symlink("go/lib", "ro"),
		hardlink("go/bin/go2", "go/bin/go"),
		file("toplevel", "stripped away"),
	}
	for _, format := range []string{FormatTar, FormatTarGz, FormatZip} {
		t.Run(format, func(t *testing.T) {
			var data []byte
			switch format {
			case FormatTar:
				data = tarBytes(t, ents...)
			case FormatTarGz:
				data = gz(t, tarBytes(t, ents...))
			case FormatZip:
				var zents []ent
				for _, e := range ents {
					if e.typ != tar.TypeLink { // zip has no hard links
						zents = append(zents, e)
					}
				}
				data = zipBytes(t, zents...)
			}
			src, _, dest := setup(t, data)
			o := opts()
			o.StripComponents = 1
			res, err := Extract(context.Background(), src, dest, o)
			if err != nil {
				t.Fatalf("Extract: %v", err)
			}
			if res.Format != format {
				t.Errorf("detected %q, want %q", res.Format, format)
			}
			mustRead(t, filepath.Join(dest, "bin/go"), "#!/bin/sh\necho go1.20.3\n")
			mustRead(t, filepath.Join(dest, "VERSION"), "go1.20.3")
			mustRead(t, filepath.Join(dest, "implicit/parent/file"), "no dir entries for my parents")
			mustRead(t, filepath.Join(dest, "bin/gofmt"), "#!/bin/sh\necho go1.20.3\n")
			mustRead(t, filepath.Join(dest, "lib/file"), "read only dir content")
			if _, err := os.Lstat(filepath.Join(dest, "toplevel")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("entry with too few components was not stripped: %v", err)
			}
			mustMode(t, filepath.Join(dest, "bin/go"), 0o755)
			mustMode(t, filepath.Join(dest, "bin/suid"), 0o755) // setuid stripped
			mustMode(t, filepath.Join(dest, "ro"), fs.ModeDir|0o555)
			if format != FormatZip {
				a, _ := os.Stat(filepath.Join(dest, "bin/go"))
				b, _ := os.Stat(filepath.Join(dest, "bin/go2"))
				if !os.SameFile(a, b) {
					t.Errorf("bin/go2 is not a hard link of bin/go")
				}
			}
			st, err := os.Stat(filepath.Join(dest, "VERSION"))
			if err != nil || !st.ModTime().Equal(time.Unix(1700000000, 0)) {
				t.Errorf("mtime not preserved: %v %v", st.ModTime(), err)
			}
			m, err := Scan(dest)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Verify(dest); err != nil {
				t.Errorf("fresh tree does not verify: %v", err)
			}
		})
	}
}

// Options.Hash: the hashes taken while writing are those of the files
// on disk, for small files (written by the writers), large ones (written
// at once) and hard links alike, and fill a manifest as ScanHashed would.
func TestExtractHashes(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", smallFile/16+100)
	ents := []ent{
		dir("go/"),
		file("go/small", "a small file"),
		file("go/empty", ""),
		file("go/bin/big", big),
		hardlink("go/bin/big2", "go/bin/big"),
		hardlink("go/small2", "go/small"),
		symlink("go/link", "small"),
	}
	for _, format := range []string{FormatTar, FormatZip} {
		t.Run(format, func(t *testing.T) {
			data := tarBytes(t, ents...)
			want := 5
			if format == FormatZip {
				data = zipBytes(t, ents[0], ents[1], ents[2], ents[3], ents[6])
				want = 3
			}
			src, _, dest := setup(t, data)
			o := opts()
			o.MaxBytes = 8 << 20
			o.StripComponents = 1
			o.Hash = true
			res, err := Extract(context.Background(), src, dest, o)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Hashes) != want {
				t.Errorf("%d hashes, want %d: %v", len(res.Hashes), want, res.Hashes)
			}
			m, err := Scan(dest)
			if err != nil {
				t.Fatal(err)
			}
			m.SetHashes(res.Hashes)
			if !m.Hashed() {
				t.Errorf("manifest not fully hashed from the extraction's hashes: %v", res.Hashes)
			}
			full, err := ScanHashed(dest)
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Encode()) != string(full.Encode()) {
				t.Errorf("manifest with the extraction's hashes:\n%s\nwant (hashed from disk):\n%s", m.Encode(), full.Encode())
			}
		})
	}
	// Without Hash, none are taken.
	src, _, dest := setup(t, tarBytes(t, file("a", "x")))
	res, err := Extract(context.Background(), src, dest, opts())
	if err != nil || res.Hashes != nil {
		t.Errorf("Extract without Hash = %v, %v; want no hashes", res.Hashes, err)
	}
}

func TestExtractAllowSetuid(t *testing.T) {
	src, _, dest := setup(t, tarBytes(t, ent{name: "suid", typ: tar.TypeReg, mode: 0o6755, body: "x"}))
	o := opts()
	o.AllowSetuid = true
	if _, err := Extract(context.Background(), src, dest, o); err != nil {
		t.Fatal(err)
	}
	mustMode(t, filepath.Join(dest, "suid"), 0o755|fs.ModeSetuid|fs.ModeSetgid)
}

func TestExtractDryRunWritesNothing(t *testing.T) {
	src, _, dest := setup(t, tarBytes(t, dir("a/"), file("a/b", "hello")))
	o := opts()
	o.DryRun = true
	res, err := Extract(context.Background(), src, "", o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 2 || res.Bytes != 5 {
		t.Errorf("dry run = %+v, want 2 entries, 5 bytes", res)
	}
	if ents, _ := os.ReadDir(dest); len(ents) != 0 {
		t.Errorf("dry run wrote %d entries", len(ents))
	}
}

func TestExtractHostile(t *testing.T) {
	long := strings.Repeat("a", 256)
	deep := strings.Repeat("abcdefghij/", 410) + "f"
	zeros := strings.Repeat("\x00", 2<<20)
	tests := []struct {
		name string
		data func(t testing.TB) []byte
		opts func(o *Options)
		want string
	}{
		{"absolute path", func(t testing.TB) []byte { return tarBytes(t, file("/etc/passwd", "x")) }, nil, "absolute"},
		{"dot dot", func(t testing.TB) []byte { return tarBytes(t, file("../escape", "x")) }, nil, `".."`},
		{"dot dot inside", func(t testing.TB) []byte { return tarBytes(t, file("a/../../escape", "x")) }, nil, `".."`},
		{"dot dot after strip", func(t testing.TB) []byte { return tarBytes(t, file("go/../x", "x")) }, func(o *Options) { o.StripComponents = 1 }, `".."`},
		{"absolute symlink", func(t testing.TB) []byte { return tarBytes(t, symlink("l", "/etc")) }, nil, "absolute"},
		{"symlink up", func(t testing.TB) []byte { return tarBytes(t, symlink("a/l", "../../etc")) }, nil, "outside"},
		{"symlink chain through dot", func(t testing.TB) []byte {
			return tarBytes(t, symlink("d", "."), symlink("l", "d/.."))
		}, nil, "outside"},
		{"symlink chain declared later", func(t testing.TB) []byte {
			return tarBytes(t, symlink("l", "d/.."), symlink("d", "."))
		}, nil, "outside"},
		{"symlink loop", func(t testing.TB) []byte { return tarBytes(t, symlink("a", "b"), symlink("b", "a")) }, nil, "levels"},
		{"write through symlink", func(t testing.TB) []byte {
			return tarBytes(t, dir("in/"), symlink("l", "in"), file("l/x", "x"))
		}, nil, "not a directory"},
		{"write through escaping symlink", func(t testing.TB) []byte {
			return tarBytes(t, symlink("l", "../.."), file("l/x", "x"))
		}, nil, "outside"},
		{"hardlink outside", func(t testing.TB) []byte { return tarBytes(t, hardlink("h", "../../etc/passwd")) }, nil, `".."`},
		{"hardlink absolute", func(t testing.TB) []byte { return tarBytes(t, hardlink("h", "/etc/passwd")) }, nil, "absolute"},
		{"hardlink to missing", func(t testing.TB) []byte { return tarBytes(t, hardlink("h", "nothere")) }, nil, "extracted earlier"},
		{"hardlink to symlink", func(t testing.TB) []byte {
			return tarBytes(t, symlink("s", "x"), hardlink("h", "s"))
		}, nil, "regular file"},
		{"char device", func(t testing.TB) []byte { return tarBytes(t, ent{name: "null", typ: tar.TypeChar}) }, nil, "device"},
		{"block device", func(t testing.TB) []byte { return tarBytes(t, ent{name: "sda", typ: tar.TypeBlock}) }, nil, "device"},
		{"fifo", func(t testing.TB) []byte { return tarBytes(t, ent{name: "p", typ: tar.TypeFifo}) }, nil, "fifo"},
		{"size bomb", func(t testing.TB) []byte { return gz(t, tarBytes(t, file("zeros", zeros))) }, nil, "expands past"},
		{"size bomb across files", func(t testing.TB) []byte {
			return tarBytes(t, file("a", zeros[:600<<10]), file("b", zeros[:600<<10]))
		}, nil, "expands past"},
		{"entry bomb", func(t testing.TB) []byte {
			var es []ent
			for i := 0; i < 101; i++ {
				es = append(es, dir(strings.Repeat("d", i+1)+"/"))
			}
			return tarBytes(t, es...)
		}, nil, "entries"},
		{"entry bomb of stripped entries", func(t testing.TB) []byte {
			var es []ent
			for i := 0; i < 101; i++ {
				es = append(es, dir(strings.Repeat("d", i+1)+"/"))
			}
			return tarBytes(t, es...)
		}, func(o *Options) { o.StripComponents = 1 }, "entries"},
		{"duplicate file", func(t testing.TB) []byte { return tarBytes(t, file("a", "1"), file("a", "2")) }, nil, "twice"},
		{"file then dir", func(t testing.TB) []byte { return tarBytes(t, file("a", "1"), dir("a/")) }, nil, "twice"},
		{"dir then symlink", func(t testing.TB) []byte { return tarBytes(t, dir("a/"), symlink("a", ".")) }, nil, "twice"},
		{"duplicate after normalising", func(t testing.TB) []byte { return tarBytes(t, file("a/b", "1"), file("./a//b", "2")) }, nil, "twice"},
		{"long component", func(t testing.TB) []byte { return tarBytes(t, file(long, "x")) }, nil, "longer than 255"},
		{"long path", func(t testing.TB) []byte { return tarBytes(t, file(deep, "x")) }, nil, "longer than"},
		{"nul in name", func(t testing.TB) []byte { return zipBytes(t, file("a\x00b", "x")) }, nil, "NUL"},
		{"not an archive", func(t testing.TB) []byte { return []byte("just some text, long enough to not be anything") }, nil, "not a tar"},
		{"truncated tar", func(t testing.TB) []byte { b := tarBytes(t, file("a", strings.Repeat("x", 5000))); return b[:1500] }, func(o *Options) { o.Format = FormatTar }, "EOF"},
		{"zip slip", func(t testing.TB) []byte { return zipBytes(t, file("../../evil", "x")) }, nil, `".."`},
		{"zip absolute", func(t testing.TB) []byte { return zipBytes(t, file("/evil", "x")) }, nil, "absolute"},
		{"zip symlink escape", func(t testing.TB) []byte { return zipBytes(t, symlink("l", "../../../etc")) }, nil, "outside"},
		{"zip device", func(t testing.TB) []byte {
			return zipBytes(t, ent{name: "dev", zipRaw: fs.ModeDevice | fs.ModeCharDevice | 0o600})
		}, nil, "device"},
		{"zip fifo", func(t testing.TB) []byte { return zipBytes(t, ent{name: "p", zipRaw: fs.ModeNamedPipe | 0o600}) }, nil, "fifo"},
		{"zip bomb", func(t testing.TB) []byte { return zipBytes(t, file("zeros", zeros)) }, nil, "expands past"},
		{"zip duplicate", func(t testing.TB) []byte { return zipBytes(t, file("a", "1"), file("a", "2")) }, nil, "twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, parent, dest := setup(t, tc.data(t))
			o := opts()
			if tc.opts != nil {
				tc.opts(&o)
			}
			_, err := Extract(context.Background(), src, dest, o)
			if err == nil {
				t.Fatalf("Extract succeeded, want an error mentioning %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Extract error %q, want it to mention %q", err, tc.want)
			}
			assertContained(t, parent, dest)
			// The dry run refuses the same archives.
			o.DryRun = true
			if _, err := Extract(context.Background(), src, "", o); err == nil {
				t.Errorf("dry run accepted what the extraction refused")
			}
		})
	}
}

func TestExtractRepeatedDirectoryIsFine(t *testing.T) {
	src, _, dest := setup(t, tarBytes(t, dir("a/"), file("a/f", "x"), ent{name: "a/", typ: tar.TypeDir, mode: 0o700}))
	if _, err := Extract(context.Background(), src, dest, opts()); err != nil {
		t.Fatal(err)
	}
	mustMode(t, filepath.Join(dest, "a"), fs.ModeDir|0o700)
}

func TestExtractCancelled(t *testing.T) {
	src, _, dest := setup(t, tarBytes(t, file("a", "x")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Extract(ctx, src, dest, opts()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract on a cancelled context = %v, want context.Canceled", err)
	}
}

func TestManifestDetectsChanges(t *testing.T) {
	tests := []struct {
		name   string
		change func(dest string) error
	}{
		{"file added", func(d string) error { return os.WriteFile(filepath.Join(d, "new"), nil, 0o644) }},
		{"file removed", func(d string) error { return os.Remove(filepath.Join(d, "a/f")) }},
		{"file rewritten same size", func(d string) error {
			return os.WriteFile(filepath.Join(d, "a/f"), []byte("y"), 0o644)
		}},
		{"mode changed", func(d string) error { return os.Chmod(filepath.Join(d, "a/f"), 0o600) }},
		{"link retargeted", func(d string) error {
			if err := os.Remove(filepath.Join(d, "l")); err != nil {
				return err
			}
			return os.Symlink("a/g", filepath.Join(d, "l"))
		}},
		{"dir removed", func(d string) error { return os.RemoveAll(filepath.Join(d, "a")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, _, dest := setup(t, tarBytes(t, dir("a/"), file("a/f", "x"), symlink("l", "a/f")))
			if _, err := Extract(context.Background(), src, dest, opts()); err != nil {
				t.Fatal(err)
			}
			m, err := Scan(dest)
			if err != nil {
				t.Fatal(err)
			}
			m2, err := DecodeManifest(m.Encode())
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if err := m2.Verify(dest); err != nil {
				t.Fatalf("unchanged tree does not verify after an encode round trip: %v", err)
			}
			if err := tc.change(dest); err != nil {
				t.Fatal(err)
			}
			if err := m2.Verify(dest); err == nil {
				t.Errorf("Verify did not notice: %s", tc.name)
			}
		})
	}
}

// assertContained fails when anything but dest exists in parent, or a
// symbolic link in dest resolves outside it.
func assertContained(t testing.TB, parent, dest string) {
	t.Helper()
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != filepath.Base(dest) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("extraction wrote outside dest: parent holds %v", names)
	}
	realDest, err := filepath.EvalSymlinks(dest)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil // dangling or looping, stays where it is
		}
		if r != realDest && !strings.HasPrefix(r, realDest+"/") {
			t.Fatalf("symbolic link %s resolves outside dest to %s", p, r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustRead(t testing.TB, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if string(b) != want {
		t.Errorf("%s = %q, want %q", p, b, want)
	}
}

func mustMode(t testing.TB, p string, want fs.FileMode) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	got := st.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if got != want {
		t.Errorf("%s mode %v, want %v", p, got, want)
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(tarBytes(f, dir("a/"), file("a/b", "x"), symlink("a/l", "b"), hardlink("a/h", "a/b")), uint8(0))
	f.Add(tarBytes(f, symlink("d", "."), symlink("l", "d/.."), file("l/x", "x")), uint8(0))
	f.Add(tarBytes(f, file("../x", "x")), uint8(0))
	f.Add(tarBytes(f, symlink("l", "../.."), file("l/x", "x")), uint8(1))
	f.Add(gz(f, tarBytes(f, dir("go/"), file("go/bin", "x"))), uint8(1))
	f.Add(zipBytes(f, dir("a/"), file("a/b", "x"), symlink("a/l", "../../x")), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, strip uint8) {
		// A plain temporary directory: t.TempDir makes the fuzzing engine
		// crawl here.
		tmp, err := os.MkdirTemp("", "fuzzextract")
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.RemoveAll(tmp); err != nil {
				t.Error(err)
			}
		}()
		src, parent, dest := filepath.Join(tmp, "artifact"), filepath.Join(tmp, "parent"), filepath.Join(tmp, "parent", "dest")
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dest, 0o755); err != nil {
			t.Fatal(err)
		}
		o := Options{MaxBytes: 1 << 20, MaxEntries: 1000, StripComponents: int(strip % 3)}
		_, err = Extract(context.Background(), src, dest, o)
		assertContained(t, parent, dest)
		if err == nil {
			// Whatever was accepted re-verifies against its own manifest.
			m, err := Scan(dest)
			if err != nil {
				t.Fatalf("scan accepted tree: %v", err)
			}
			if err := m.Verify(dest); err != nil {
				t.Fatalf("accepted tree does not verify: %v", err)
			}
		}
	})
}

// Errors name the archive as the operator knows it (the artifact), not
// the agent's cache path.
func TestExtractErrorNamesTheArtifact(t *testing.T) {
	src := filepath.Join(t.TempDir(), "cache", "sha256-0123")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("not an archive at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(context.Background(), src, t.TempDir(), Options{Format: FormatTarGz, MaxBytes: 1 << 20, MaxEntries: 10, Name: "go1.20.3.linux-amd64.tar.gz"})
	if err == nil || !strings.Contains(err.Error(), "extract go1.20.3.linux-amd64.tar.gz: ") || strings.Contains(err.Error(), src) {
		t.Errorf("Extract of a bad archive: %v, want it named go1.20.3.linux-amd64.tar.gz, not %s", err, src)
	}
}

// Files are created with their mode and changed after only where the
// umask took bits away (or special bits are kept): whatever the umask,
// every file ends with the archive's mode, small or large (written by
// the decoding goroutine), and the umask is what the process had before.
func TestExtractModesWhateverTheUmask(t *testing.T) {
	big := strings.Repeat("x", smallFile+1)
	modes := []int64{0o755, 0o644, 0o666, 0o600, 0o777, 0o444, 0o2755}
	for _, umask := range []int{0, 0o022, 0o077, 0o027} {
		t.Run(fmt.Sprintf("umask %04o", umask), func(t *testing.T) {
			var ents []ent
			for _, m := range modes {
				ents = append(ents,
					ent{name: fmt.Sprintf("small-%o", m), typ: tar.TypeReg, mode: m, body: "x"},
					ent{name: fmt.Sprintf("large-%o", m), typ: tar.TypeReg, mode: m, body: big})
			}
			src, _, dest := setup(t, tarBytes(t, ents...))
			o := opts()
			o.MaxBytes, o.AllowSetuid = 1<<30, true
			old := syscall.Umask(umask)
			_, err := Extract(context.Background(), src, dest, o)
			if got := syscall.Umask(old); got != umask {
				t.Errorf("umask after the extraction = %04o, want %04o", got, umask)
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range modes {
				want := fs.FileMode(m & 0o777)
				if m&0o2000 != 0 {
					want |= fs.ModeSetgid
				}
				mustMode(t, filepath.Join(dest, fmt.Sprintf("small-%o", m)), want)
				mustMode(t, filepath.Join(dest, fmt.Sprintf("large-%o", m)), want)
			}
		})
	}
}
