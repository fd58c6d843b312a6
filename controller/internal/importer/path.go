package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// resolve finds the import directory p lies under and p's path inside
// it. An admin's RPC must not read arbitrary controller files: a path
// outside every import directory is refused, and the file is opened
// through os.Root, so neither ".." nor a symbolic link leads out.
func (im *Importer) resolve(p string) (dir, rel string, err error) {
	if len(im.roots) == 0 {
		return "", "", fmt.Errorf("%w: %s: this controller imports no files from its disk; start it with --import-dir DIR (e.g. the mounted share) to allow files below DIR, or import over http(s)", ErrRefused, p)
	}
	var dirs []string
	for _, r := range im.roots {
		for _, d := range []string{r.dir, r.resolved} {
			if rel, err := filepath.Rel(d, p); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return d, rel, nil
			}
		}
		dirs = append(dirs, r.dir)
	}
	return "", "", fmt.Errorf("%w: %s is not under an import directory of this controller (%s); copy it there, or start the controller with --import-dir naming its directory", ErrRefused, p, strings.Join(dirs, ", "))
}

// open opens p below its import directory and checks it is a regular file.
func (im *Importer) open(p string) (*os.File, uint64, error) {
	dir, rel, err := im.resolve(p)
	if err != nil {
		return nil, 0, err
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: import directory %s: %w", ErrFetch, dir, err)
	}
	defer func() { _ = r.Close() }() // the file stays open
	f, err := r.Open(rel)
	switch {
	case os.IsNotExist(err):
		return nil, 0, fmt.Errorf("%w: %s: no such file on the controller", ErrFetch, p)
	case err != nil:
		return nil, 0, fmt.Errorf("%w: %s: %w; a path, or a symbolic link in it, may not lead out of the import directory %s", ErrRefused, p, unwrapPath(err), dir)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, 0, fmt.Errorf("%w: %s: %w", ErrFetch, p, err)
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, 0, fmt.Errorf("%w: %s is not a regular file", artifact.ErrInvalid, p)
	}
	return f, uint64(fi.Size()), nil //nolint:gosec // a regular file's size is never negative
}

// unwrapPath drops the operation and path a PathError repeats.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readFile stores a file under an import directory, through the store's
// push path: it hashes while it copies and keeps nothing on a mismatch.
func (im *Importer) readFile(ctx context.Context, src source, put artifact.PutRequest, progress func(Progress)) (*ferryv1.Artifact, artifact.Pushed, error) {
	f, size, err := im.open(src.path)
	if err != nil {
		return nil, artifact.Unchanged, err
	}
	defer func() { _ = f.Close() }() // read-only
	if size > im.cfg.MaxSize {
		return nil, artifact.Unchanged, tooLarge(src, size, im.cfg.MaxSize)
	}
	put.Size = size
	body := &counting{r: f, total: size, progress: progress}
	return im.cfg.Store.Put(ctx, put, body)
}

func tooLarge(src source, size, limit uint64) error {
	return fmt.Errorf("%w: %s is %d bytes, more than the import limit of %d", ErrTooLarge, src, size, limit)
}

// readSmall reads a small file (a checksum file) under an import directory.
func (im *Importer) readSmall(p string, limit int64) ([]byte, error) {
	f, size, err := im.open(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only
	if size > uint64(limit) {        //nolint:gosec // limit is a positive constant
		return nil, fmt.Errorf("%w: %s is %d bytes, too large for a checksum file", artifact.ErrInvalid, p, size)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFetch, p, err)
	}
	return data, nil
}

// counting reports the bytes read through it.
type counting struct {
	r        io.Reader
	n, total uint64
	progress func(Progress)
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += uint64(n) //nolint:gosec // Read never returns a negative count
	c.progress(Progress{Received: c.n, Total: c.total, Stage: "fetching"})
	return n, err
}
