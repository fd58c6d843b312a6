package dirlock_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/dirlock"
)

func TestAcquireNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	first, err := dirlock.Acquire(dir, "x.lock")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "x.lock"))
	if err != nil || strings.TrimSpace(string(data)) != fmt.Sprint(os.Getpid()) {
		t.Errorf("lock file holds %q (%v), want this process's pid %d", data, err, os.Getpid())
	}
	// flock conflicts between open files, even within one process: the
	// second Acquire stands for a second daemon.
	_, err = dirlock.Acquire(dir, "x.lock")
	var held *dirlock.HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second Acquire: %v, want a HeldError", err)
	}
	if held.PID != os.Getpid() || !strings.Contains(held.Cmdline, filepath.Base(os.Args[0])) {
		t.Errorf("holder = pid %d, %q; want pid %d running %s", held.PID, held.Cmdline, os.Getpid(), os.Args[0])
	}
	if want := fmt.Sprintf("%s is in use by process %d (", dir, os.Getpid()); !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := dirlock.Acquire(dir, "x.lock")
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	_ = again.Release()
}

func TestAcquireStaleFile(t *testing.T) {
	// A lock file left by a process that died holds its pid but no lock.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.lock"), []byte("999999999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := dirlock.Acquire(dir, "x.lock")
	if err != nil {
		t.Fatalf("Acquire over a stale file: %v", err)
	}
	defer func() { _ = l.Release() }()
	data, _ := os.ReadFile(filepath.Join(dir, "x.lock"))
	if strings.TrimSpace(string(data)) != fmt.Sprint(os.Getpid()) {
		t.Errorf("lock file holds %q, want this pid", data)
	}
}

func TestAcquireMissingDir(t *testing.T) {
	if _, err := dirlock.Acquire(filepath.Join(t.TempDir(), "none"), "x.lock"); err == nil {
		t.Fatal("Acquire in a missing dir succeeded")
	}
}

func TestAcquireWithinWaitsForTheHolder(t *testing.T) {
	dir := t.TempDir()
	first, err := dirlock.Acquire(dir, "x.lock")
	if err != nil {
		t.Fatal(err)
	}
	if pid := dirlock.HolderPID(dir, "x.lock"); pid != os.Getpid() {
		t.Errorf("HolderPID = %d, want %d", pid, os.Getpid())
	}
	var held *dirlock.HeldError
	if _, err := dirlock.AcquireWithin(dir, "x.lock", 50*time.Millisecond); !errors.As(err, &held) {
		t.Fatalf("AcquireWithin while held: %v, want a HeldError after the wait", err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = first.Release()
		close(released)
	}()
	l, err := dirlock.AcquireWithin(dir, "x.lock", 10*time.Second)
	if err != nil {
		t.Fatalf("AcquireWithin after the holder released: %v", err)
	}
	<-released
	_ = l.Release()
	if pid := dirlock.HolderPID(t.TempDir(), "x.lock"); pid != 0 {
		t.Errorf("HolderPID without a lock file = %d, want 0", pid)
	}
}
