package archive

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestManifestHashes: hashes survive Encode and Decode, manifests written
// before hashes existed still decode, and a full Diff sees a same-size,
// same-time edit that the cheap one cannot.
func TestManifestHashes(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := ScanHashed(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m[1].Hash != "2c8b08da5ce60398e1f19af0e5dccc744df274b826abe585eaba68c525434806" {
		t.Fatalf("hash of f: %q", m[1].Hash)
	}
	back, err := DecodeManifest(m.Encode())
	if err != nil || !reflect.DeepEqual(back, m) {
		t.Fatalf("round trip: %v\n%v\n%v", err, back, m)
	}
	old := strings.ReplaceAll(string(m.Encode()), " "+m[1].Hash, "")
	if back, err := DecodeManifest([]byte(old)); err != nil || back[1].Hash != "" {
		t.Fatalf("a manifest without hashes: %v %v", back, err)
	}
	if _, err := DecodeManifest([]byte(old[:len(old)-1] + " nothex\n")); err == nil || !strings.Contains(err.Error(), "malformed hash") {
		t.Fatalf("a bad hash: %v", err)
	}

	st, _ := os.Stat(p)
	if err := os.WriteFile(p, []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if n, ex, err := m.Diff(dir, false, 5); err != nil || n != 0 {
		t.Fatalf("cheap diff: %d %v %v", n, ex, err)
	}
	if n, ex, err := m.Diff(dir, true, 5); err != nil || n != 1 || ex[0] != p+": content changed (same size and time)" {
		t.Fatalf("full diff: %d %v %v", n, ex, err)
	}
}

// Every field survives Encode and DecodeManifest, odd names and times
// included, and malformed lines are refused with their number.
func TestManifestRoundTrip(t *testing.T) {
	m := Manifest{
		{Path: ".", Type: 'd', Mode: 0o755, UID: 0, GID: 0},
		{Path: "a b/\"quoted\"\n", Type: 'f', Mode: 0o4755 | 0o1000, Size: 1 << 40, Mtime: -1234567890123, UID: 4294967295, GID: 7,
			Hash: "2c8b08da5ce60398e1f19af0e5dccc744df274b826abe585eaba68c525434806"},
		{Path: "l", Type: 'l', Mode: 0o777, Target: "../x y"},
		{Path: "é", Type: 'f', Mode: 0o600, Size: 0, Mtime: 1700000000123456789},
	}
	back, err := DecodeManifest(m.Encode())
	if err != nil || !reflect.DeepEqual(back, m) {
		t.Fatalf("round trip: %v\n%#v\nwant\n%#v", err, back, m)
	}
	good := "f 644 1 2 3 4 \"p\" \"\""
	for _, bad := range []string{
		"f 648 1 2 3 4 \"p\" \"\"",          // not octal
		"f 644 x 2 3 4 \"p\" \"\"",          // size
		"f 644 1 2 -3 4 \"p\" \"\"",         // uid
		"f 644 1 2 3 4294967296 \"p\" \"\"", // gid past 32 bits
		"f 644 1 2 3 4 p \"\"",              // unquoted path
		"f 644 1 2 3 4 \"p\"",               // no target
		"ff 644 1 2 3 4 \"p\" \"\"",         // type
	} {
		if _, err := DecodeManifest([]byte(good + "\n" + bad + "\n")); err == nil || !strings.Contains(err.Error(), "manifest line 2: malformed") {
			t.Errorf("%q: %v, want it refused as malformed", bad, err)
		}
	}
	if _, err := DecodeManifest([]byte(good + "\n")); err != nil {
		t.Errorf("%q: %v", good, err)
	}
}

// walkReference is walk as filepath.WalkDir and Lstat by path give it,
// what the directory-relative walk must match.
func walkReference(dir string) (Manifest, error) {
	var m Manifest
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
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
			e.Target, _ = os.Readlink(p)
		}
		m = append(m, e)
		return nil
	})
	return m, err
}

func TestScanMatchesPathWalk(t *testing.T) {
	dir := t.TempDir()
	mk := func(p string, mode fs.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, body string, mode fs.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("b/deep/er/est", 0o755)
	mk("a", 0o700|fs.ModeSetgid)
	mk("tmp", 0o777|fs.ModeSticky)
	mk("empty", 0o555)
	write("B", "upper", 0o644)
	write("b/deep/er/est/f", strings.Repeat("x", 5000), 0o755|fs.ModeSetuid)
	write("a/.hidden", "", 0o400)
	write("a/é", "unicode", 0o640)
	write("b.txt", "dot after b", 0o644)
	for name, target := range map[string]string{"b/link": "deep/er", "dangling": "nothere", "long": strings.Repeat("t", 300)} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := walkReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Scan:\n%s\nwant (WalkDir):\n%s", got.Encode(), want.Encode())
	}
	if err := got.Verify(dir); err != nil {
		t.Errorf("Verify: %v", err)
	}

	// What a manifest cannot hold is refused, naming it.
	if err := syscall.Mkfifo(filepath.Join(dir, "b/deep/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Scan(dir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "b/deep/fifo")+": unexpected fifo") {
		t.Errorf("Scan of a tree with a fifo: %v", err)
	}
}

// Encode writes what the fmt-based encoder of earlier agents wrote, byte
// for byte, so manifests stay readable both ways across an upgrade.
func TestManifestEncodeAsBefore(t *testing.T) {
	m := Manifest{
		{Path: ".", Type: 'd', Mode: 0o755},
		{Path: "a b/\"q\"\n\x01é", Type: 'f', Mode: 0o4755 | fs.ModeSetuid | fs.ModeSticky, Size: 1 << 40, Mtime: -1234567890123, UID: 4294967295, GID: 7,
			Hash: "2c8b08da5ce60398e1f19af0e5dccc744df274b826abe585eaba68c525434806"},
		{Path: "l", Type: 'l', Mode: 0o777, Target: "../x y\t"},
	}
	var b strings.Builder
	for _, e := range m {
		fmt.Fprintf(&b, "%c %o %d %d %d %d %s %s", e.Type, uint32(e.Mode), e.Size, e.Mtime, e.UID, e.GID,
			strconv.Quote(e.Path), strconv.Quote(e.Target))
		if e.Hash != "" {
			b.WriteString(" " + e.Hash)
		}
		b.WriteByte('\n')
	}
	if got := string(m.Encode()); got != b.String() {
		t.Errorf("Encode:\n%q\nwant:\n%q", got, b.String())
	}
}
