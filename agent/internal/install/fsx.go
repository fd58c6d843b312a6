package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// resolve maps a step path (absolute, as on the node) to the host path
// under the install root. It refuses relative paths, "..", NUL bytes and,
// under a root other than "/", ancestors that are symbolic links leading
// out of the root.
func (i *Installer) resolve(p string) (string, error) {
	if p == "" {
		return "", errors.New("path is empty")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte", p)
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("path %q must be absolute (it is resolved under the install root)", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("path %q contains \"..\" and could leave the install root", p)
		}
	}
	clean := path.Clean(p)
	if clean == "/" {
		return "", fmt.Errorf("path %q is the install root itself", p)
	}
	host := filepath.Join(i.root, clean)
	if i.root == "/" {
		return host, nil
	}
	// The deepest existing ancestor must really be inside the root.
	dir := filepath.Dir(host)
	for {
		real, err := filepath.EvalSymlinks(dir)
		if err == nil {
			if real != i.realRoot && !strings.HasPrefix(real, i.realRoot+"/") {
				return "", fmt.Errorf("path %q leaves the install root: %s resolves to %s", p, dir, real)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("path %q: %w", p, err)
		}
		if dir == i.root {
			break
		}
		dir = filepath.Dir(dir)
	}
	return host, nil
}

// removeCreated removes the directories a change created (outermost
// first, as missingDirs lists them), innermost first, if they are empty.
func removeCreated(created []string) {
	for j := len(created) - 1; j >= 0; j-- {
		os.Remove(created[j]) // fails harmlessly when not empty
	}
}

// writeAtomic writes data to target through temp (in the same directory):
// write, chmod, chown (uid/gid -1: leave), fsync, rename, fsync the dir.
func writeAtomic(target, temp string, data []byte, mode fs.FileMode, uid, gid int) error {
	os.Remove(temp)
	f, err := os.OpenFile(temp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
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
		err = os.Rename(temp, target)
	}
	if err != nil {
		os.Remove(temp)
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(target))
}

// writeFileSync writes a private file (state, backups) and syncs it.
func writeFileSync(p string, data []byte, mode fs.FileMode) error {
	return writeAtomic(p, p+".tmp", data, mode, -1, -1)
}

// syncFS flushes the file system holding p, so a freshly extracted tree is
// on disk before it is switched in (one call instead of an fsync a file).
func syncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// exchange swaps two paths atomically (renameat2 RENAME_EXCHANGE). It
// returns errExchangeUnsupported where the file system cannot.
func exchange(a, b string) error {
	err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return errExchangeUnsupported
	}
	if err != nil {
		return fmt.Errorf("exchange %s and %s: %w", a, b, err)
	}
	return nil
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
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{Dev: uint64(s.Dev), Ino: s.Ino}, true
}

// permMask is the part of a file's mode a file step manages.
const permMask = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
