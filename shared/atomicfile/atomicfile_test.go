package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ca.key")
	for _, tc := range []struct {
		data string
		mode os.FileMode
	}{
		{"first", 0o600},
		{"second, replacing the first", 0o644},
	} {
		if err := WriteFile(p, []byte(tc.data), tc.mode); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != tc.data {
			t.Fatalf("read back %q, %v; want %q", got, err, tc.data)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != tc.mode {
			t.Fatalf("mode %v, %v; want %v", fi.Mode().Perm(), err, tc.mode)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("dir holds %v (%v); want only ca.key, no temp files left", entries, err)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "ca.key")
	if err := WriteFile(p, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteFile into a missing directory succeeded")
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	if err := SyncDir(dir); err != nil {
		t.Fatalf("SyncDir(%s): %v", dir, err)
	}
	if err := SyncDir(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Fatalf("SyncDir of a missing dir: %v, want not-exist", err)
	}
}

func TestWriteLeavesPathAsItWasOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("failed")
	newContent := func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }
	cases := []struct {
		name         string
		write        func(io.Writer) error
		beforeRename func(string) error
		want         string
		wantErr      error
	}{
		{"write fails", func(w io.Writer) error { _, _ = io.WriteString(w, "partial"); return failed }, nil, "old", failed},
		{"check refuses", newContent, func(string) error { return failed }, "old", failed},
		{"check sees the new content", newContent, func(tmp string) error {
			if got, _ := os.ReadFile(tmp); string(got) != "new" {
				return fmt.Errorf("temp file holds %q", got)
			}
			return nil
		}, "new", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Write(path, 0o600, tc.write, tc.beforeRename)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Write = %v, want %v", err, tc.wantErr)
			}
			if got, _ := os.ReadFile(path); string(got) != tc.want {
				t.Errorf("%s holds %q, want %q", path, got, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("temp files left behind: %v", entries)
			}
		})
	}
}
