// Package dirlock keeps a daemon's state directory to one process: an
// exclusive flock(2) on a lock file in it, which the kernel releases when
// the process ends however it ends, so a crash leaves no stale lock. The
// holder writes its pid into the file, so a second process can name it.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Lock is a held directory lock.
type Lock struct {
	f *os.File
}

// HeldError is Acquire's error when another process holds the lock.
type HeldError struct {
	Dir     string
	PID     int    // 0: the holder wrote no pid yet
	Cmdline string // "" when /proc does not show it
}

func (e *HeldError) Error() string {
	who := "another process"
	switch {
	case e.PID > 0 && e.Cmdline != "":
		who = fmt.Sprintf("process %d (%s)", e.PID, e.Cmdline)
	case e.PID > 0:
		who = fmt.Sprintf("process %d", e.PID)
	}
	return fmt.Sprintf("%s is in use by %s", e.Dir, who)
}

// maxCmdline bounds the command line quoted in the error.
const maxCmdline = 300

// Acquire locks dir by the file name in it (created 0600 if missing),
// without waiting: when another process holds it, the error is a
// *HeldError naming that process. The lock lasts until Release or the
// end of the process; the file descriptor is close-on-exec, so children
// (install steps) never hold it.
func Acquire(dir, name string) (*Lock, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := flock(f); err != nil {
		_ = f.Close() // the lock error is the one to report
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, holder(dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := writePID(f); err != nil {
		_ = f.Close() // closing releases the lock
		return nil, fmt.Errorf("write pid to %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// AcquireWithin is Acquire retried until the lock is free or wait has
// passed; then the error is Acquire's *HeldError.
func AcquireWithin(dir, name string, wait time.Duration) (*Lock, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := Acquire(dir, name)
		var held *HeldError
		if err == nil || !errors.As(err, &held) || !time.Now().Before(deadline) {
			return l, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HolderPID is the pid the last holder of the lock file wrote (0 when
// none): the process that holds it now if it is held, so check the
// process before acting on it.
func HolderPID(dir, name string) int {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// holder reads who holds the lock: its pid from the file, its command
// line from /proc when this process may read it.
func holder(dir, path string) *HeldError {
	e := &HeldError{Dir: dir}
	pid := HolderPID(dir, filepath.Base(path))
	if pid == 0 {
		return e
	}
	e.PID = pid
	if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		s := strings.TrimSpace(strings.Map(func(r rune) rune {
			switch {
			case r == 0:
				return ' ' // between arguments
			case r < ' ' || r == 0x7f:
				return '?' // never echo control characters to a terminal
			}
			return r
		}, string(cmd)))
		if len(s) > maxCmdline {
			s = s[:maxCmdline] + "…"
		}
		e.Cmdline = s
	}
	return e
}

// Release unlocks the directory. The lock file stays: removing it would
// let a process that opened it a moment earlier lock a file no one else
// sees.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
