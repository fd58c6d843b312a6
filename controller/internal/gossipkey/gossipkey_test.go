package gossipkey

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOpenCreatesThenKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	first := r.Current()
	if first.Generation != 1 || len(first.Key) != 32 || !first.RotatedAt.IsZero() {
		t.Fatalf("first key: generation %d, %d bytes, rotated %v; want generation 1, 32 bytes, never rotated", first.Generation, len(first.Key), first.RotatedAt)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	again, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Current(); got.Generation != 1 || !bytes.Equal(got.Key, first.Key) {
		t.Errorf("reopened: generation %d, same key %v; want the first key", got.Generation, bytes.Equal(got.Key, first.Key))
	}
}

func TestRotateIsStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := r.Current()
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	next, err := r.Rotate(at, noRecord)
	if err != nil {
		t.Fatal(err)
	}
	if next.Generation != 2 || bytes.Equal(next.Key, old.Key) || !next.RotatedAt.Equal(at) {
		t.Fatalf("rotated: generation %d, new key %v, at %v; want generation 2, a new key, at %v", next.Generation, !bytes.Equal(next.Key, old.Key), next.RotatedAt, at)
	}
	reopened, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := reopened.Current(); got.Generation != 2 || !bytes.Equal(got.Key, next.Key) || !got.RotatedAt.Equal(at) {
		t.Errorf("after a restart: %+v, want %+v", got, next)
	}
}

// A key file written before rotation existed (the bare 32-byte key) is
// generation 1 and becomes a key file at the first rotation.
func TestOpenReadsTheBareKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	bare := bytes.Repeat([]byte{'{'}, 32) // even one that starts like JSON
	if err := os.WriteFile(path, bare, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Current(); got.Generation != 1 || !bytes.Equal(got.Key, bare) {
		t.Fatalf("bare key read as %+v, want generation 1 with the file's bytes", got)
	}
	if _, err := r.Rotate(time.Now(), noRecord); err != nil {
		t.Fatal(err)
	}
	if got, err := Open(path); err != nil || got.Current().Generation != 2 {
		t.Fatalf("after the first rotation: %v, %+v; want generation 2", err, got)
	}
}

func TestOpenRefusesDamagedFiles(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"short bare key", "0123456789", "neither a key file nor a 32-byte key (10 bytes)"},
		{"short key in the file", `{"generation":3,"key":"AAAA"}`, "holds a 3-byte key of generation 3"},
		{"no generation", `{"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, "generation 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "gossip.key")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "restore it from a backup") {
				t.Fatalf("Open: %v, want an error saying %q and how to recover", err, tt.want)
			}
		})
	}
}

// A rotation that cannot be stored changes nothing: the controller keeps
// handing out the key it has on disk.
func TestRotateFailureKeepsTheKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := Open(filepath.Join(dir, "gossip.key"))
	if err != nil {
		t.Fatal(err)
	}
	old := r.Current()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rotate(time.Now(), noRecord); err == nil || !strings.Contains(err.Error(), "store the new gossip key") {
		t.Fatalf("Rotate into a missing dir: %v, want an error", err)
	}
	if got := r.Current(); got.Generation != old.Generation || !bytes.Equal(got.Key, old.Key) {
		t.Errorf("after a failed rotation the key is %+v, want the old one", got)
	}
}

func noRecord(Key) error { return nil }

// A rotation whose audit entry cannot be written changes nothing: the file
// holds the previous key again.
func TestRotateUnrecordedKeepsTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := r.Current()
	var recorded Key
	_, err = r.Rotate(time.Now(), func(k Key) error {
		recorded = k
		return errors.New("audit log full")
	})
	if err == nil || err.Error() != "audit log full" {
		t.Fatalf("Rotate: %v, want the record's error", err)
	}
	if recorded.Generation != 2 || bytes.Equal(recorded.Key, old.Key) {
		t.Errorf("record was given generation %d, want the new key of generation 2", recorded.Generation)
	}
	reopened, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []Key{r.Current(), reopened.Current()} {
		if got.Generation != 1 || !bytes.Equal(got.Key, old.Key) {
			t.Errorf("after an unrecorded rotation: generation %d, want the previous key of generation 1", got.Generation)
		}
	}
}
