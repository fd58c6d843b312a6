package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// fileKind writes a file with its content, mode and owner. Its writer,
// managedFile, also writes the env and sudoers kinds' files, so all their
// changes are file changes, undone and restored here.
type fileKind struct{ managedFile }

// Change: file changes are journaled as file writes.
func (fileKind) Change() string { return "file" }

func (fileKind) Describe(s *ferryv1.Step) string { return "file " + s.GetFile().GetPath() }

func (k fileKind) Validate(r validateRequest) error {
	s := r.step.GetFile()
	if _, err := k.i.filePath(s); err != nil {
		return err
	}
	if s.GetMode() > 0o7777 {
		return fmt.Errorf("mode %o has bits beyond 07777", s.GetMode())
	}
	if _, _, err := lookupOwner(s.GetOwner(), s.GetGroup()); err != nil {
		return err
	}
	return nil
}

// defaultFileMode is a file step's mode when it gives none: private,
// since what a package writes is often a secret.
const defaultFileMode = 0o600

// filePath resolves a file step's path and checks where it leads against
// the install policy: not in /proc, /sys, /dev or the agent's state
// directory, not in /etc/sudoers.d or /etc/profile.d (the sudoers and env
// kinds' job), and no credential file unless the step allows it.
func (i *Installer) filePath(s *ferryv1.FileStep) (resolved, error) {
	r, err := i.resolvePath(s.GetPath())
	if err != nil {
		return resolved{}, err
	}
	return r, policy("file", s.GetPath(), r, func(p string) *installpolicy.Refusal {
		return installpolicy.FilePath(p, i.stateNode, s.GetAllowSensitive())
	})
}

// wantFileStep is the file a file step wants.
func wantFileStep(i *Installer, r stepRequest) (wantFile, error) {
	s := r.step.GetFile()
	target, err := i.filePath(s)
	if err != nil {
		return wantFile{}, err
	}
	uid, gid, err := lookupOwner(s.GetOwner(), s.GetGroup())
	if err != nil {
		return wantFile{}, err
	}
	mode := s.GetMode()
	if mode == 0 {
		mode = defaultFileMode
	}
	return wantFile{
		label: s.GetPath(), target: target.host, data: s.GetContent(), mode: fileMode(mode), uid: uid, gid: gid, dirMode: 0o755,
	}, nil
}

// managedFile is Plan and Apply for a kind whose step manages one file
// (file, env, sudoers): the kind says which file it wants, managedFile
// compares it with the node's, validates it and writes it.
type managedFile struct {
	i    *Installer
	want func(*Installer, stepRequest) (wantFile, error)
}

// wantFile describes a file a step manages.
type wantFile struct {
	label    string // the path as the package names it
	target   string // host path
	data     []byte
	mode     fs.FileMode
	uid, gid int // -1: keep the current owner (root for a new file)
	dirMode  fs.FileMode
	// validate runs on a private copy before anything is replaced; its
	// note (which checks ran) goes to the step's output.
	validate func(ctx context.Context, path string) (note string, err error)
}

// fileDiff is a wanted file compared with what is on disk.
type fileDiff struct {
	want           wantFile
	existed        bool
	st             fs.FileInfo
	cur            []byte
	curUID, curGID int
	// what the write does: "create ..." or "update ..."; "" when the file
	// is as wanted.
	what string
	// note is what the validation said it checked.
	note string
}

// diff compares the wanted file with the one on disk and, when they
// differ, runs the file's validation on a private copy.
func (m managedFile) diff(ctx context.Context, r stepRequest) (fileDiff, error) {
	w, err := m.want(m.i, r)
	if err != nil {
		return fileDiff{}, err
	}
	d := fileDiff{want: w, curUID: -1, curGID: -1}
	st, err := os.Lstat(w.target)
	d.existed, d.st = err == nil, st
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fileDiff{}, err
	}
	if d.existed {
		if !st.Mode().IsRegular() {
			return fileDiff{}, fmt.Errorf("%s exists and is a %v, not a regular file; Ferry will not replace it", w.label, st.Mode().Type())
		}
		if d.cur, err = os.ReadFile(w.target); err != nil {
			return fileDiff{}, err
		}
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			d.curUID, d.curGID = int(s.Uid), int(s.Gid)
		}
	}
	var diffs []string
	if d.existed {
		if !bytes.Equal(d.cur, w.data) {
			diffs = append(diffs, "content")
		}
		if mode := st.Mode() & permMask; mode != w.mode {
			diffs = append(diffs, fmt.Sprintf("mode %04o -> %04o", unixMode(mode), unixMode(w.mode)))
		}
		if (w.uid >= 0 && w.uid != d.curUID) || (w.gid >= 0 && w.gid != d.curGID) {
			diffs = append(diffs, fmt.Sprintf("owner %d:%d -> %d:%d", d.curUID, d.curGID, w.uid, w.gid))
		}
		if len(diffs) == 0 {
			return d, nil
		}
	}
	if w.validate != nil {
		tmp := filepath.Join(m.i.dir, "tmp", fmt.Sprintf("%s-%d", r.job.key, r.index))
		if err := os.WriteFile(tmp, w.data, 0o600); err != nil {
			return fileDiff{}, err
		}
		note, err := w.validate(ctx, tmp)
		if rerr := os.Remove(tmp); rerr != nil {
			m.i.log.Warn("could not remove a file checked before writing", "path", tmp, "err", rerr)
		}
		if err != nil {
			if note != "" {
				err = fmt.Errorf("%w (%s)", err, note)
			}
			return fileDiff{}, err
		}
		d.note = note
	}
	d.what = fmt.Sprintf("create %s (%d bytes, mode %04o)", w.label, len(w.data), unixMode(w.mode))
	if d.existed {
		d.what = fmt.Sprintf("update %s (%s)", w.label, strings.Join(diffs, ", "))
	}
	return d, nil
}

// plan is what writing the file would do.
func (d fileDiff) plan() stepResponse {
	if d.what == "" {
		return stepResponse{detail: "unchanged"}
	}
	return stepResponse{changed: true, detail: "would " + d.what, output: d.note}
}

func (m managedFile) Plan(ctx context.Context, r stepRequest) (stepResponse, error) {
	d, err := m.diff(ctx, r)
	if err != nil {
		return stepResponse{}, err
	}
	return d.plan(), nil
}

// Apply backs the previous content up, journals the change, then
// replaces the file atomically.
func (m managedFile) Apply(ctx context.Context, r stepRequest) (stepResponse, error) {
	d, err := m.diff(ctx, r)
	if err != nil {
		return stepResponse{}, err
	}
	if d.what == "" {
		return stepResponse{detail: "unchanged"}, nil
	}
	i, w := m.i, d.want
	jc, idx := r.job, r.index
	a := &action{
		Kind:    fileKind{}.Change(),
		Step:    idx,
		Target:  w.target,
		Temp:    tempBeside(w.target),
		Existed: d.existed,
		State:   "prepared",
		Created: missingDirs(filepath.Dir(w.target)),
	}
	if d.existed {
		a.Backup = filepath.Join(i.dir, "backups", fmt.Sprintf("%s-%d", jc.key, idx))
		a.Mode = d.st.Mode() & permMask
		a.UID, a.GID = d.curUID, d.curGID
		if err := writeFileSync(a.Backup, d.cur); err != nil {
			return stepResponse{}, fmt.Errorf("back up %s: %w", w.label, err)
		}
	}
	if err := i.addAction(jc, "install", a); err != nil {
		return stepResponse{}, err
	}
	// Walk to the file again, creating its directories, and write in the
	// directory that walk opened: a directory on the way replaced by a
	// symbolic link since the check is caught, not followed.
	dir, err := i.openParent(w.target, w.dirMode)
	if err != nil {
		return stepResponse{}, fmt.Errorf("write %s: %w", w.label, err)
	}
	defer func() { _ = dir.Close() }() // read-only; writeAtomicIn syncs through it
	uid, gid := w.uid, w.gid
	if uid < 0 {
		uid = d.curUID
	}
	if gid < 0 {
		gid = d.curGID
	}
	i.at("file:prepared")
	if err := writeAtomicIn(dir, filepath.Base(w.target), filepath.Base(a.Temp), w.data, w.mode, uid, gid); err != nil {
		return stepResponse{}, fmt.Errorf("write %s: %w", w.label, err)
	}
	i.at("file:written")
	a.State = "applied"
	if err := jc.save(); err != nil {
		return stepResponse{}, err
	}
	return stepResponse{changed: true, detail: strings.Replace(strings.Replace(d.what, "create", "created", 1), "update", "updated", 1), output: d.note}, nil
}

// Undo puts a written file's previous content back, or removes the file
// when there was none.
func (fileKind) Undo(r undoRequest) error {
	a := r.change
	var tempErr error
	if a.Temp != "" {
		// The temporary file of a write that did not finish, if any. Its
		// removal failing does not stop the file itself being put back.
		if err := os.Remove(a.Temp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			tempErr = err
		}
	}
	return errors.Join(undoFile(a), tempErr)
}

// undoFile is Undo for the file itself.
func undoFile(a *action) error {
	if !a.Existed {
		if err := os.Remove(a.Target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return atomicfile.SyncDir(filepath.Dir(a.Target))
	}
	data, err := os.ReadFile(a.Backup)
	if err != nil {
		return fmt.Errorf("read the backup of the previous file: %w", err)
	}
	return restoreFile(a, data)
}

// Restore puts back the content a file had before the install, backing
// up the current content should the rollback be undone.
func (k fileKind) Restore(r restoreRequest) (restoreResponse, error) {
	a := r.change
	out := restoreResponse{detail: "previous content restored"}
	if !a.Existed {
		out.detail = "removed (it did not exist before)"
	}
	return out, k.rollbackFile(r.job, a)
}

func (k fileKind) rollbackFile(jc *jobCtx, a *action) error {
	b := &action{Kind: k.Change(), Step: a.Step, Target: a.Target, Temp: a.Temp, State: "prepared"}
	st, err := os.Lstat(a.Target)
	switch {
	case err == nil && st.Mode().IsRegular():
		cur, err := os.ReadFile(a.Target)
		if err != nil {
			return err
		}
		b.Existed = true
		b.Mode = st.Mode() & permMask
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			b.UID, b.GID = int(s.Uid), int(s.Gid)
		}
		b.Backup = filepath.Join(k.i.dir, "backups", fmt.Sprintf("%s-rb-%d", jc.key, a.Step))
		if err := writeFileSync(b.Backup, cur); err != nil {
			return fmt.Errorf("back up %s: %w", a.Target, err)
		}
	case err == nil:
		return fmt.Errorf("%s is a %v now, not a regular file; Ferry will not replace it", a.Target, st.Mode().Type())
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := k.i.addAction(jc, "rollback", b); err != nil {
		return err
	}
	if a.Existed {
		data, err := os.ReadFile(a.Backup)
		if err != nil {
			return fmt.Errorf("read the kept previous content: %w", err)
		}
		if err := restoreFile(a, data); err != nil {
			return err
		}
	} else {
		if err := os.Remove(a.Target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removeCreated(a.Created)
	}
	b.State = "applied"
	return jc.save()
}

// tempBeside is the temporary file a write of target goes through.
func tempBeside(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".ferry-tmp")
}

// restoreFile writes a file's previous content back through a.Temp, with
// the mode and owner a recorded, recreating missing directories (a
// rollback may have removed those the install had created).
func restoreFile(a *action, data []byte) error {
	if err := makeDirs(missingDirs(filepath.Dir(a.Target)), 0o755); err != nil {
		return err
	}
	uid, gid := a.UID, a.GID
	if os.Geteuid() != 0 {
		uid, gid = -1, -1 // only root can hand files to another owner
	}
	return writeAtomic(a.Target, a.Temp, data, a.Mode, uid, gid)
}

func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

func fileMode(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// lookupOwner resolves user and group names on the host (-1 when empty).
func lookupOwner(owner, group string) (int, int, error) {
	uid, gid := -1, -1
	if owner != "" {
		u, err := user.Lookup(owner)
		if err != nil {
			return 0, 0, fmt.Errorf("owner %q: %w", owner, err)
		}
		if uid, err = strconv.Atoi(u.Uid); err != nil {
			return 0, 0, fmt.Errorf("owner %q: uid %q", owner, u.Uid)
		}
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return 0, 0, fmt.Errorf("group %q: gid %q", group, g.Gid)
		}
	}
	return uid, gid, nil
}

// Removal: the step's file, as if it had not existed before.
func (m managedFile) Removal(r stepRequest) (*action, error) {
	w, err := m.want(m.i, r)
	if err != nil {
		return nil, err
	}
	return &action{Kind: "file", Step: r.index, Target: w.target, Temp: tempBeside(w.target)}, nil
}
