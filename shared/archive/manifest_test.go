package archive

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
