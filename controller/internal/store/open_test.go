package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// fullStore writes a store with enough records to span many pages and
// returns its bytes.
func fullStore(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := Open(path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := range 200 {
		id := fmt.Sprintf("web-%03d", i)
		if err := s.PutNode(NodeRecord{ID: id, Group: "production", EnrolledAt: now, CertSerials: []string{"1f"}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveRollout(&ferryv1.Rollout{Id: fmt.Sprintf("ro-%03d", i), PackageName: "go", Message: strings.Repeat("x", 300)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutToken(TokenRecord{ID: "tok001", Group: "production", ExpiresAt: now.Add(time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 20*4096 {
		t.Fatalf("the store has %d bytes; want more pages to damage", len(data))
	}
	return data
}

func TestOpenRefusesWhatIsNotASoundStore(t *testing.T) {
	full := fullStore(t)
	pageSize := 4096
	garble := func(from, to int) []byte {
		b := bytes.Clone(full)
		rand.New(rand.NewSource(int64(from))).Read(b[from:to])
		return b
	}
	foreign := func(t *testing.T, path string) {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	newer := func(t *testing.T, path string) {
		if err := os.WriteFile(path, full, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error { return setSchema(tx.Bucket(bucketMeta), schemaCurrent+1) }); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	cases := []struct {
		name   string
		write  func(t *testing.T, path string) // nil: no file
		create bool
		is     error
		want   string
	}{
		{"missing", nil, false, ErrNoStore, "does not exist"},
		{"empty", content(nil), false, ErrNoStore, "is empty (0 bytes)"},
		{"truncated to half", content(full[:len(full)/2]), false, ErrDamaged, "was truncated"},
		{"truncated to half, create", content(full[:len(full)/2]), true, ErrDamaged, "was truncated"},
		{"truncated inside the header", content(full[:100]), false, ErrDamaged, "is damaged"},
		{"header garbled", content(garble(0, 2*pageSize)), false, ErrDamaged, "header is not a valid bbolt header"},
		{"pages garbled", content(garble(2*pageSize, len(full))), false, ErrDamaged, "is damaged"},
		{"pages garbled, create", content(garble(2*pageSize, len(full))), true, ErrDamaged, "is damaged"},
		{"not a bbolt file", content([]byte(strings.Repeat("not a database\n", 1000))), true, ErrDamaged, "is damaged"},
		{"another program's bbolt file", foreign, true, ErrDamaged, "not a Ferry store"},
		{"written by a newer controller", newer, false, ErrDamaged, "newer ferry-controller"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.db")
			if tc.write != nil {
				tc.write(t, path)
			}
			before, _ := os.ReadFile(path)
			s, err := Open(path, Options{Create: tc.create})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open = %v\nwant %v naming %s and saying %q", err, tc.is, path, tc.want)
			}
			if errors.Is(tc.is, ErrDamaged) && !strings.Contains(err.Error(), "restore") && !strings.Contains(err.Error(), "newer") {
				t.Errorf("Open = %v; want it to say to restore from a backup", err)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Errorf("a refused Open changed %s (%d bytes before, %d after)", path, len(before), len(after))
			}
			if _, err := OpenReadOnly(path); !errors.Is(err, tc.is) {
				t.Errorf("OpenReadOnly = %v, want %v", err, tc.is)
			}
		})
	}
}

func content(data []byte) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenCreatesOnlyWhenAsked(t *testing.T) {
	for _, name := range []string{"missing", "empty"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.db")
			if name == "empty" {
				content(nil)(t, path)
			}
			s, err := Open(path, Options{Create: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutToken(TokenRecord{ID: "tok001"}, nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// Once created, it opens without Create and keeps its records.
			s, err = Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if ts, err := s.Tokens(); err != nil || len(ts) != 1 {
				t.Errorf("tokens after reopening = %v, %v", ts, err)
			}
		})
	}
}

func TestOpenRefusesASecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := Open(path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path, Options{}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another ferry-controller") {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
	if _, err := OpenReadOnly(path); !errors.Is(err, ErrLocked) {
		t.Errorf("OpenReadOnly of an open store = %v, want ErrLocked", err)
	}
}

// Damage anywhere in the file is either harmless (a page not in use) or
// an ErrDamaged error: never a panic, never a crash on a mapped page.
func TestOpenSurvivesRandomDamage(t *testing.T) {
	full := fullStore(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(1))
	runs := 300
	if testing.Short() {
		runs = 50
	}
	opened, refused := 0, 0
	for i := range runs {
		data := bytes.Clone(full)
		switch i % 3 {
		case 0: // a few garbled spans
			for range 1 + rng.Intn(4) {
				off := rng.Intn(len(data) - 64)
				rng.Read(data[off : off+1+rng.Intn(64)])
			}
		case 1: // a whole page
			p := rng.Intn(len(data) / 4096)
			rng.Read(data[p*4096 : (p+1)*4096])
		case 2: // cut anywhere
			data = data[:rng.Intn(len(data))]
		}
		path := filepath.Join(dir, fmt.Sprintf("ferry-%d.db", i))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{})
		if err != nil {
			if !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrNoStore) {
				t.Errorf("run %d: Open = %v, want ErrDamaged", i, err)
			}
			refused++
			continue
		}
		opened++
		// What opened reads without panicking; a garbled record is an error.
		_, _ = s.Nodes() // an error is a fine answer; a panic is not
		_, _ = s.Tokens()
		_, _ = s.Rollouts()
		s.Close()
	}
	t.Logf("%d damaged copies opened (damage in unused space), %d refused", opened, refused)
	if refused == 0 {
		t.Error("no damaged copy was refused")
	}
}

// TestOpenRefusesDeeplyNestedBuckets: a file whose buckets nest deeper
// than Ferry ever writes is refused as damaged rather than walked until
// the stack overflows.
func TestOpenRefusesDeeplyNestedBuckets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("deep"))
		for i := 0; err == nil && i < maxBucketDepth+4; i++ {
			b, err = b.CreateBucket([]byte("deeper"))
		}
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), "nested more than") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open = %v, want it refused as damaged, naming %s", err, path)
	}
}
