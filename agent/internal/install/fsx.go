package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// removeCreated removes the directories a change created (outermost
// first, as missingDirs lists them), innermost first, if they are empty.
func removeCreated(created []string) {
	for j := len(created) - 1; j >= 0; j-- {
		removeIfEmpty(created[j])
	}
}

// removeIfEmpty removes the directory p if it is empty. A directory that
// still holds something (or is gone already) stays as it is: that is the
// point, so the error is dropped; gc removes what no record refers to.
func removeIfEmpty(p string) {
	_ = os.Remove(p)
}

// closeFD closes a descriptor opened for reading or as O_PATH: nothing
// written can be lost, so there is no error to act on.
func closeFD(fd int) {
	_ = unix.Close(fd)
}

// writeAtomic writes data to target through temp (in the same directory):
// write, chmod, chown (uid/gid -1: leave), fsync, rename, fsync the dir.
func writeAtomic(target, temp string, data []byte, mode fs.FileMode, uid, gid int) error {
	dir, err := os.Open(filepath.Dir(target))
	if err != nil {
		return err
	}
	defer func() { _ = dir.Close() }() // read-only; the write is synced through it
	return writeAtomicIn(dir, filepath.Base(target), filepath.Base(temp), data, mode, uid, gid)
}

// writeAtomicIn is writeAtomic for names in a directory already open
// (and verified: see openParent), never following a link at temp.
func writeAtomicIn(dir *os.File, name, temp string, data []byte, mode fs.FileMode, uid, gid int) error {
	dfd := int(dir.Fd())
	tempPath := filepath.Join(dir.Name(), temp)
	// A temporary file a crash left behind; when this fails, the O_EXCL
	// open below reports why.
	_ = unix.Unlinkat(dfd, temp, 0)
	fd, err := unix.Openat(dfd, temp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "open", Path: tempPath, Err: err}
	}
	f := os.NewFile(uintptr(fd), tempPath)
	_, err = f.Write(data)
	if err == nil && (uid >= 0 || gid >= 0) {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Chmod(mode) // after chown, which may clear setuid bits
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(dfd, temp, dfd, name); rerr != nil {
			err = &os.LinkError{Op: "rename", Old: tempPath, New: filepath.Join(dir.Name(), name), Err: rerr}
		}
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, temp, 0) // best effort: err is what went wrong
		return err
	}
	return atomicfile.SyncOpenDir(dir)
}

// writeFileSync writes a private file (state, backups, manifests; mode
// 0600) and syncs it.
func writeFileSync(p string, data []byte) error {
	return writeAtomic(p, p+".tmp", data, 0o600, -1, -1)
}

// syncFS flushes the file system holding p, so a freshly extracted tree is
// on disk before it is switched in (one call instead of an fsync a file).
func syncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }() // opened read-only, to name the file system
	return unix.Syncfs(int(f.Fd()))
}

// exchange swaps two paths atomically (renameat2 RENAME_EXCHANGE). It
// returns errExchangeUnsupported where the file system cannot.
func exchange(a, b string) error {
	err := exchangeAt(unix.AT_FDCWD, a, unix.AT_FDCWD, b)
	if err != nil && !errors.Is(err, errExchangeUnsupported) {
		return fmt.Errorf("exchange %s and %s: %w", a, b, err)
	}
	return err
}

// exchangeAt is exchange for names relative to directories (AT_FDCWD:
// the paths as given), returning the system's error as it is.
func exchangeAt(dirA int, a string, dirB int, b string) error {
	err := unix.Renameat2(dirA, a, dirB, b, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return errExchangeUnsupported
	}
	return err
}

var errExchangeUnsupported = errors.New("atomic exchange not supported")

// fileID identifies a file system object across renames.
type fileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

func idOf(p string) (fileID, bool) {
	st, err := os.Lstat(p)
	if err != nil {
		return fileID{}, false
	}
	return idOfInfo(st)
}

func fileIDOf(f *os.File) (fileID, error) {
	st, err := f.Stat()
	if err != nil {
		return fileID{}, err
	}
	id, ok := idOfInfo(st)
	if !ok {
		return fileID{}, fmt.Errorf("%s: no device and inode number", f.Name())
	}
	return id, nil
}

func idOfInfo(st fs.FileInfo) (fileID, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{Dev: uint64(s.Dev), Ino: s.Ino}, true //nolint:unconvert // Dev is a uint32 on linux/mips*
}

// permMask is the part of a file's mode a file step manages.
const permMask = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
