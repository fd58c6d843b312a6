package archive

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setTimesFD sets the access and modification times of the open file fd
// (futimens: utimensat with no name), so no name is looked up again and
// no check for a link at it is needed. ok is false where the kernel does
// not take it, and nothing was set.
func setTimesFD(fd int, mtime time.Time) (ok bool, err error) {
	ts := [2]unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	for {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0) //nolint:gosec // a descriptor is not negative
		switch e {
		case 0:
			return true, nil
		case unix.EINTR:
			continue
		case unix.EINVAL, unix.ENOSYS:
			return false, nil
		}
		return false, e
	}
}
