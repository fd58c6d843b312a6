package controller

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testConfig(dataDir string) Config {
	return Config{DataDir: dataDir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)}
}

// start runs a controller until the test ends or stop is called.
func start(t *testing.T, cfg Config) (c *Controller, stop func()) {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	}
	t.Cleanup(stop)
	waitReady(t, c)
	return c, stop
}

func waitReady(t *testing.T, c *Controller) {
	t.Helper()
	for !c.ready.Load() {
		select {
		case <-t.Context().Done():
			t.Fatal("controller never became ready")
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A store that is missing, empty or damaged beside what earlier runs left
// stops the controller with an error naming the file and the way back;
// only --new-store, and only for a missing or empty one, starts over.
func TestNewRefusesALostStore(t *testing.T) {
	cases := []struct {
		name     string
		damage   func(t *testing.T, path string)
		want     []string
		newStore bool // whether --new-store then starts the controller
	}{
		{"missing", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, []string{"does not exist"}, true},
		{"empty", func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{"is empty (0 bytes)"}, true},
		{"truncated", func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, []string{"is damaged", "truncated"}, false},
		{"garbled", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte(strings.Repeat("garbage!", 2048)), 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}, []string{"is damaged"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, stop := start(t, testConfig(dir)) // the first start creates everything
			stop()
			path := filepath.Join(dir, "ferry.db")
			tc.damage(t, path)

			_, err := New(testConfig(dir))
			if err == nil {
				t.Fatal("the controller started")
			}
			msg := err.Error()
			for _, want := range append(tc.want, path, "ferry-controller restore --data-dir "+dir, "docs/operations.md") {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not say %q:\n%s", want, msg)
				}
			}
			if !strings.Contains(msg, "--new-store") {
				t.Errorf("error does not say what --new-store does here:\n%s", msg)
			}
			if tc.newStore && !strings.Contains(msg, "the CA certificate (ca.crt), the CA key (ca.key), the admin credential (admin.yaml)") {
				t.Errorf("error does not name what the data dir holds:\n%s", msg)
			}

			cfg := testConfig(dir)
			cfg.AllowNewStore = true
			c, err := New(cfg)
			switch {
			case tc.newStore && err != nil:
				t.Fatalf("with --new-store: %v", err)
			case tc.newStore:
				c.Close()
			case err == nil:
				c.Close()
				t.Fatal("--new-store replaced a damaged store")
			case !strings.Contains(err.Error(), "does not replace a damaged store"):
				t.Errorf("with --new-store: %v", err)
			}
		})
	}
}

func TestNewCreatesTheStoreOnlyOnAFirstStart(t *testing.T) {
	// Artifact blobs alone are enough to tell this is not a first start.
	dir := t.TempDir()
	blobs := filepath.Join(dir, "artifacts", "sha256")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blobs, strings.Repeat("ab", 32)), []byte("blob"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testConfig(dir)); err == nil || !strings.Contains(err.Error(), "1 artifact blob") {
		t.Errorf("New beside artifact blobs = %v, want an error naming them", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ferry.db")); !os.IsNotExist(err) {
		t.Errorf("a refused start created ferry.db (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); !os.IsNotExist(err) {
		t.Errorf("a refused start created a CA (%v)", err)
	}
}
