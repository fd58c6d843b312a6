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
