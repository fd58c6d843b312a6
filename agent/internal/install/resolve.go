package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// Step paths are checked where they lead, not by name: /opt/link/sudoers.d
// with /opt/link -> ../etc is /etc/sudoers.d. resolvePath walks a path
// under the install root one component at a time, following symbolic
// links itself, and the kinds check the result against installpolicy.
// Just before writing, openParent walks the path again with directory
// handles and the write is made relative to the directory that walk
// opened, so a directory swapped for a symbolic link after the check is
// caught instead of followed.

// maxLinks bounds the symbolic links one resolution follows, as the
// kernel's own limit does (ELOOP).
const maxLinks = 40

// resolved is a step path resolved under the install root.
type resolved struct {
	// node is the path as on the node with every symbolic link on the way
	// resolved; the last component is as named, since steps replace it by
	// name (rename) and never write through a link there.
	node string
	// host is node under the install root.
	host string
}

// resolve maps a step path (absolute, as on the node) to the host path
// under the install root, with symbolic links resolved (see resolvePath).
func (i *Installer) resolve(p string) (string, error) {
	r, err := i.resolvePath(p)
	return r.host, err
}

// resolvePath resolves a step path. It refuses relative paths, "..", NUL
// bytes, the root itself, loops of symbolic links, and paths in
// /etc/profile.d and /etc/sudoers.d that a symbolic link leads elsewhere:
// those are written only where they are named.
func (i *Installer) resolvePath(p string) (resolved, error) {
	clean, err := checkStepPath(p)
	if err != nil {
		return resolved{}, err
	}
	node, dir, err := i.walk(clean, 0)
	if dir != nil {
		_ = dir.Close() // read-only
	}
	if err != nil {
		return resolved{}, fmt.Errorf("path %s: %w", p, err)
	}
	if node != clean {
		for _, d := range []string{"/etc/profile.d", "/etc/sudoers.d"} {
			if installpolicy.Within(clean, d) {
				return resolved{}, fmt.Errorf("path %s resolves to %s through a symbolic link; Ferry writes %s only where it is named, so remove the link", p, node, d)
			}
		}
	}
	return resolved{node: node, host: i.hostPath(node)}, nil
}

// checkStepPath checks a step path's form and returns it clean.
func checkStepPath(p string) (string, error) {
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
	return clean, nil
}

// policy checks a step path against an installpolicy list, as named and
// where it resolved to.
func policy(what, named string, r resolved, check func(node string) *installpolicy.Refusal) error {
	clean := path.Clean(named)
	if ref := check(clean); ref != nil {
		return fmt.Errorf("%s %s: %s; %s", what, named, ref.Problem, ref.Fix)
	}
	if r.node != clean {
		if ref := check(r.node); ref != nil {
			return fmt.Errorf("%s %s resolves to %s through a symbolic link: %s; %s", what, named, r.node, ref.Problem, ref.Fix)
		}
	}
	return nil
}

func (i *Installer) hostPath(node string) string {
	return filepath.Join(i.root, node)
}

// nodePath is the inverse of hostPath for a path under the root.
func (i *Installer) nodePath(host string) string {
	if i.root == "/" {
		return host
	}
	return "/" + strings.TrimPrefix(strings.TrimPrefix(host, i.root), "/")
}

// openParent opens the directory that holds host (a path resolvePath
// returned), to write in just after: it walks the path again, creating
// missing directories with mode mkdir (0: none), and fails if the path
// no longer resolves to itself, that is if a directory on the way was
// replaced by a symbolic link since it was checked. The caller closes
// the directory.
func (i *Installer) openParent(host string, mkdir fs.FileMode) (*os.File, error) {
	node := i.nodePath(host)
	got, dir, err := i.walk(node, mkdir)
	if err != nil {
		return nil, fmt.Errorf("path %s: %w", node, err)
	}
	if got != node {
		if dir != nil {
			_ = dir.Close() // read-only
		}
		return nil, fmt.Errorf("path %s changed while the step ran: it now resolves to %s through a symbolic link; nothing was written there", node, got)
	}
	if dir == nil {
		return nil, fmt.Errorf("path %s: its directory %s does not exist", node, path.Dir(node))
	}
	return dir, nil
}

// walk resolves the clean node path p under the install root, one
// component at a time: each directory is opened relative to the one
// before with O_NOFOLLOW, and symbolic links are followed here, a
// relative target from the link's directory and an absolute one from
// the install root (see linkTarget); ".." never climbs above the root.
// The last component is not followed. Components from the first missing
// one on are taken as written, unless mkdir is set: then missing
// directories are created with that mode on the way.
//
// It returns the resolved path and, when the last component's directory
// exists, that directory open for reading, which the caller closes.
func (i *Installer) walk(p string, mkdir fs.FileMode) (string, *os.File, error) {
	rootFD, err := unix.Open(i.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, &fs.PathError{Op: "open", Path: i.root, Err: err}
	}
	type dir struct {
		fd   int
		name string
	}
	stack := []dir{{fd: rootFD}} // the directories walked, root first
	defer func() {
		for _, d := range stack {
			closeFD(d.fd)
		}
	}()
	nodeOf := func(extra ...string) string {
		names := []string{"/"}
		for _, d := range stack[1:] {
			names = append(names, d.name)
		}
		return path.Join(append(names, extra...)...)
	}
	todo := strings.Split(strings.TrimPrefix(p, "/"), "/")
	var missing []string // components below the deepest existing directory
	last, links := "", 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			switch {
			case len(missing) > 0:
				missing = missing[:len(missing)-1]
			case len(stack) > 1:
				closeFD(stack[len(stack)-1].fd)
				stack = stack[:len(stack)-1]
			}
			continue
		case len(todo) == 0:
			last = c // p's own last component: never a link target's
			continue
		case len(missing) > 0:
			missing = append(missing, c)
			continue
		}
		cur := stack[len(stack)-1].fd
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && mkdir != 0 {
			if err := unix.Mkdirat(cur, c, uint32(mkdir.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", nil, &fs.PathError{Op: "mkdir", Path: i.hostPath(nodeOf(c)), Err: err}
			}
			fd, err = unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if errors.Is(err, unix.ENOENT) {
			missing = append(missing, c)
			continue
		}
		if err != nil {
			return "", nil, &fs.PathError{Op: "open", Path: i.hostPath(nodeOf(c)), Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			closeFD(fd)
			return "", nil, &fs.PathError{Op: "stat", Path: i.hostPath(nodeOf(c)), Err: err}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			stack = append(stack, dir{fd: fd, name: c})
		case unix.S_IFLNK:
			link := nodeOf(c)
			target, err := readlinkFD(fd)
			closeFD(fd)
			if err != nil {
				return "", nil, &fs.PathError{Op: "readlink", Path: i.hostPath(link), Err: err}
			}
			if links++; links > maxLinks {
				return "", nil, fmt.Errorf("more than %d symbolic links on the way (a loop?): %w", maxLinks, unix.ELOOP)
			}
			if strings.HasPrefix(target, "/") {
				if target, err = i.linkTarget(link, target); err != nil {
					return "", nil, err
				}
				for _, d := range stack[1:] {
					closeFD(d.fd)
				}
				stack = stack[:1]
			}
			todo = append(strings.Split(target, "/"), todo...)
		default:
			closeFD(fd)
			return "", nil, fmt.Errorf("%s is not a directory", nodeOf(c))
		}
	}
	node := nodeOf(append(missing, last)...)
	if len(missing) > 0 {
		return node, nil, nil
	}
	fd, err := unix.Openat(stack[len(stack)-1].fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, &fs.PathError{Op: "open", Path: i.hostPath(path.Dir(node)), Err: err}
	}
	return node, os.NewFile(uintptr(fd), i.hostPath(path.Dir(node))), nil
}

// linkTarget maps an absolute symbolic link target to a node path. Under
// "/" it is the target. Under another install root it is read under the
// root, as in a chroot, except that a target spelled as a host path
// inside the root is taken back into it, and a target that exists only
// outside the root is refused: such a link was made for the host, and
// re-aiming it under the root would write where its author did not mean.
func (i *Installer) linkTarget(link, target string) (string, error) {
	if i.root == "/" {
		return target, nil
	}
	for _, r := range []string{i.realRoot, i.root} {
		if installpolicy.Within(target, r) {
			return "/" + strings.TrimPrefix(strings.TrimPrefix(target, r), "/"), nil
		}
	}
	if !exists(filepath.Join(i.root, target)) && exists(target) {
		return "", fmt.Errorf("%s is a symbolic link to %s, which leaves the install root %s", link, target, i.root)
	}
	return target, nil
}

// readlinkFD reads the target of a symbolic link opened with
// O_PATH|O_NOFOLLOW.
func readlinkFD(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
