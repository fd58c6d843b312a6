package archive

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"sync"
)

// dirCache opens the directories of the tree being extracted as roots of
// their own, each from its parent's root (os.Root.OpenRoot: a link on the
// way cannot lead out of the parent), so an entry is created with one call
// relative to its directory instead of a walk from the destination down
// every component each time. By induction every cached root is a directory
// beneath the destination's root. Like the destination's own root, a
// cached one follows its directory if it is moved: nothing but the
// extraction writes in the fresh staging tree it is meant for, and one
// whose directory is swapped for a link mid-extraction keeps writing into
// the directory it opened, never the link's target.
//
// At most maxOpenDirs roots stay open (an archive's entries mostly come
// directory by directory); a root in use by a writer is never closed.
type dirCache struct {
	top    *os.Root
	topRef *dirRef // top's descriptor (fd), for files created in it

	mu   sync.Mutex
	dirs map[string]*dirRef
	tick uint64
}

type dirRef struct {
	root *os.Root
	// dir is the directory opened through root (root.Open(".")), once a
	// file is created in it: its descriptor is the dirfd of the openat
	// that creates a file, so writing one costs no more system calls than
	// tar's (an os.File from Root.OpenFile costs five more: the poller's
	// fcntl and epoll_ctl calls, futile for a regular file).
	dir  *os.File
	refs int
	used uint64
}

// fd returns the descriptor of d's directory, opening it once; c.mu is
// held.
func (d *dirRef) fd() (int, error) {
	if d.dir == nil {
		f, err := d.root.Open(".")
		if err != nil {
			return -1, err
		}
		d.dir = f
	}
	return int(d.dir.Fd()), nil
}

// close closes d's root and its directory.
func (d *dirRef) close() {
	if d.dir != nil {
		_ = d.dir.Close() // a directory opened to create files in
	}
	_ = d.root.Close() // a directory opened to look up names in
}

const maxOpenDirs = 64

func newDirCache(top *os.Root) *dirCache {
	return &dirCache{top: top, topRef: &dirRef{root: top}, dirs: map[string]*dirRef{}}
}

// openFD returns the root of the directory rel ("." for the destination)
// and a descriptor of that directory, to be released once used.
func (c *dirCache) openFD(rel string) (*os.Root, int, func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.topRef
	if rel != "." && rel != "" {
		var err error
		if d, err = c.get(rel); err != nil {
			return nil, -1, nil, err
		}
	}
	fd, err := d.fd()
	if err != nil {
		return nil, -1, nil, inTree(err, rel)
	}
	d.refs++
	return d.root, fd, func() {
		c.mu.Lock()
		d.refs--
		c.mu.Unlock()
	}, nil
}

// open returns the root of the directory rel ("." for the destination),
// to be released once used.
func (c *dirCache) open(rel string) (*os.Root, func(), error) {
	if rel == "." || rel == "" {
		return c.top, func() {}, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d, err := c.get(rel)
	if err != nil {
		return nil, nil, err
	}
	d.refs++
	return d.root, func() {
		c.mu.Lock()
		d.refs--
		c.mu.Unlock()
	}, nil
}

// get returns rel's entry, opening it (and its parents) if needed; c.mu
// is held.
func (c *dirCache) get(rel string) (*dirRef, error) {
	c.tick++
	if d, ok := c.dirs[rel]; ok {
		d.used = c.tick
		return d, nil
	}
	parent := c.top
	if p := path.Dir(rel); p != "." {
		pd, err := c.get(p)
		if err != nil {
			return nil, err
		}
		pd.refs++ // not evicted while its child is opened
		defer func() { pd.refs-- }()
		parent = pd.root
	}
	r, err := parent.OpenRoot(path.Base(rel))
	if err != nil {
		return nil, inTree(err, rel)
	}
	c.evict()
	d := &dirRef{root: r, used: c.tick}
	c.dirs[rel] = d
	return d, nil
}

// evict closes the least recently used roots no one holds, down to room
// for one more; c.mu is held.
func (c *dirCache) evict() {
	for len(c.dirs) >= maxOpenDirs {
		var oldest string
		var least uint64
		for k, d := range c.dirs {
			if d.refs == 0 && (oldest == "" || d.used < least) {
				oldest, least = k, d.used
			}
		}
		if oldest == "" {
			return // all in use: a few more stay open for a while
		}
		c.dirs[oldest].close()
		delete(c.dirs, oldest)
	}
}

// close closes every cached root.
func (c *dirCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, d := range c.dirs {
		d.close()
		delete(c.dirs, k)
	}
	if c.topRef.dir != nil {
		_ = c.topRef.dir.Close() // a directory opened to create files in
		c.topRef.dir = nil
	}
}

// in runs op on the name rel in its directory's root.
func (c *dirCache) in(rel string, op func(dir *os.Root, name string) error) error {
	dir, release, err := c.open(path.Dir(rel))
	if err != nil {
		return err
	}
	defer release()
	return inTree(op(dir, path.Base(rel)), rel)
}

// mkdir creates the directory rel; one that exists already is fine.
func (c *dirCache) mkdir(rel string, perm fs.FileMode) error {
	return c.in(rel, func(dir *os.Root, name string) error {
		if err := dir.Mkdir(name, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return nil
	})
}

// inTree names rel, the path in the tree, in an error about a name in
// one of its directories, as an error from the destination's root would.
func inTree(err error, rel string) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		pe.Path = rel
	}
	return err
}
