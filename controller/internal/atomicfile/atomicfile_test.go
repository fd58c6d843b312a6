package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("failed")
	cases := []struct {
		name         string
		write        func(io.Writer) error
		beforeRename func(string) error
		want         string
		wantErr      error
	}{
		{"write fails", func(w io.Writer) error { io.WriteString(w, "partial"); return failed }, nil, "old", failed},
		{"check refuses", func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }, func(string) error { return failed }, "old", failed},
		{"written", func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }, nil, "new", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Write(path, 0o600, tc.write, tc.beforeRename)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Write = %v, want %v", err, tc.wantErr)
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.want {
				t.Errorf("%s holds %q, want %q", path, got, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("temp files left behind: %v", entries)
			}
		})
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}
