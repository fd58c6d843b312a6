package archive

import (
	"bufio"
	"errors"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Regular files are written through bare descriptors: created with openat
// relative to their directory's descriptor (dirCache.openFD), written,
// given their mode and times, closed. Extraction creates thousands of
// files, and each os.File costs several system calls more than these (the
// poller's attempts to register a regular file) and a finalizer.

// createAt creates the regular file name (one component) in the
// directory open as dirfd, exclusively and not following a link, with
// perm before the umask.
func createAt(dirfd int, name string, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// fdWriter writes to a descriptor, all of p or an error.
type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(int(w), p[done:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return done, err
		case n <= 0:
			return done, io.ErrShortWrite
		}
		done += n
	}
	return done, nil
}

// unixMode is m's permission and special bits as chmod takes them.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// currentUmask is the process's umask, read from /proc/self/status (the
// umask system call cannot read it without setting it), or -1 where that
// does not say. A file created with a mode the umask leaves whole needs no
// chmod after; with -1 every file gets one.
func currentUmask() int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer func() { _ = f.Close() }() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "Umask:")
		if !ok {
			continue
		}
		m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
		if err != nil || m > 0o777 {
			return -1
		}
		return int(m)
	}
	return -1
}
