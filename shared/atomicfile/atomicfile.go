// Package atomicfile writes files so that readers see the old content or
// the new, never a mix, and a crash never leaves a half-written file under
// the real name: write a temp file beside the target, fsync it, rename it
// over the target, fsync the directory.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFile writes data to path via a temp file in the same directory,
// fsync and rename.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return Write(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, nil)
}

// Write is WriteFile for content that is streamed: write writes it to the
// temp file. beforeRename, when not nil, is called with the finished temp
// file's name just before it replaces path, to check it or to keep the
// old file; its error aborts the write. On any error path is left as it
// was.
func Write(path string, mode os.FileMode, write func(io.Writer) error, beforeRename func(tmp string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	// After the rename there is no temp file left to remove.
	defer func() { _ = os.Remove(tmp) }()
	err = f.Chmod(mode)
	if err == nil {
		err = write(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if beforeRename != nil {
		if err := beforeRename(tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The new content is in place and visible; a failed directory sync
	// only risks the rename on power loss, not worth failing the write.
	_ = SyncDir(dir)
	return nil
}

// SyncDir fsyncs a directory, making the renames and creations in it
// durable. File systems that cannot sync a directory (EINVAL) count as
// synced.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // opened read-only, for Sync
	return SyncOpenDir(d)
}

// SyncOpenDir is SyncDir for a directory already open, e.g. one a caller
// verified before writing in it.
func SyncOpenDir(d *os.File) error {
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
