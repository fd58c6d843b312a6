package archive

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// setTimesFD sets the access and modification times of the open file f
// (utimensat with AT_EMPTY_PATH): no name is looked up again, and no
// check for a link at it is needed. ok is false where the kernel does not
// take AT_EMPTY_PATH for utimensat (before Linux 5.8?), and nothing was set.
func setTimesFD(f *os.File, mtime time.Time) (ok bool, err error) {
	ts := unix.NsecToTimespec(mtime.UnixNano())
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.UtimesNanoAt(int(fd), "", []unix.Timespec{ts, ts}, unix.AT_EMPTY_PATH)
	}); err != nil {
		return false, err
	}
	if errors.Is(serr, unix.EINVAL) || errors.Is(serr, unix.ENOENT) {
		return false, nil
	}
	return serr == nil, serr
}
