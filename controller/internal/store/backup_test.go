package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestBackupWhileWriting(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "ferry.db"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 50 {
		if err := s.PutToken(TokenRecord{ID: fmt.Sprintf("tok%03d", i), Group: "g"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Writers keep going during the backup; it sees one moment of them.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.SaveRollout(&ferryv1.Rollout{Id: fmt.Sprintf("ro-%d", i), Message: strings.Repeat("m", 500)}, nil); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var copies [][]byte
	for range 5 {
		var buf bytes.Buffer
		n, err := s.Backup(&buf)
		if err != nil || n != int64(buf.Len()) {
			t.Fatalf("Backup = %d, %v; wrote %d bytes", n, err, buf.Len())
		}
		copies = append(copies, buf.Bytes())
	}
	close(stop)
	wg.Wait()
	for i, data := range copies {
		path := filepath.Join(dir, fmt.Sprintf("backup-%d.db", i))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("backup %d does not open: %v", i, err)
		}
		tokens, err := b.Tokens()
		if err != nil || len(tokens) != 50 {
			t.Errorf("backup %d: %d tokens, %v; want 50", i, len(tokens), err)
		}
		if _, err := b.Rollouts(); err != nil {
			t.Errorf("backup %d: rollouts: %v", i, err)
		}
		b.Close()
	}
}

func TestRestore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.db")
	s, err := Open(path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"tok001", "tok002"} {
		if err := s.PutToken(TokenRecord{ID: id}, nil); err != nil {
			t.Fatal(err)
		}
	}
	backup := filepath.Join(dir, "backup.db")
	f, err := os.Create(backup)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := s.PutToken(TokenRecord{ID: "tok003"}, nil); err != nil { // after the backup
		t.Fatal(err)
	}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

	// Not while the store is open.
	if _, _, err := Restore(backup, path, now); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "stop it") {
		t.Errorf("Restore over an open store = %v, want ErrLocked", err)
	}
	s.Close()

	// Not from something that is not a store.
	bad := filepath.Join(dir, "bad.db")
	if err := os.WriteFile(bad, []byte("not a store"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Restore(bad, path, now); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), bad) {
		t.Errorf("Restore from a damaged backup = %v, want ErrDamaged naming %s", err, bad)
	}
	if s, err := Open(path, Options{}); err != nil {
		t.Fatalf("store after refused restores: %v", err)
	} else {
		if ts, _ := s.Tokens(); len(ts) != 3 {
			t.Errorf("refused restores changed the store: %d tokens", len(ts))
		}
		s.Close()
	}

	kept, counts, err := Restore(backup, path, now)
	if err != nil {
		t.Fatal(err)
	}
	if counts.Tokens != 2 || kept != path+".replaced-20240501T120000Z" {
		t.Errorf("Restore = %q, %+v", kept, counts)
	}
	for file, want := range map[string]int{path: 2, kept: 3} {
		s, err := Open(file, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if ts, _ := s.Tokens(); len(ts) != want {
			t.Errorf("%s: %d tokens, want %d", file, len(ts), want)
		}
		s.Close()
	}

	// Into a data dir that lost its store.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if kept, _, err := Restore(backup, path, now); err != nil || kept != "" {
		t.Errorf("Restore where no store is = %q, %v", kept, err)
	}
}
