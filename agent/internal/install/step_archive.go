package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// archiveKind extracts the package's artifact into dest. The new tree is
// built beside the old one (in dest's hold directory) and switched in with
// one rename, or an exchange where the file system has it; the old tree is
// kept there for rollback.
type archiveKind struct{ i *Installer }

// Change: archive changes are journaled as tree switches.
func (archiveKind) Change() string { return "tree" }

// UsesArtifact: the archive step extracts the artifact.
func (archiveKind) UsesArtifact() {}

// ReadsStream: the archive step extracts a streamed artifact into its
// staging tree as it arrives and switches it in once verified (extract).
func (archiveKind) ReadsStream() {}

// TakesTranscoded: a tar or tar.gz step extracts the zstd form's tar
// stream, the same as the original's.
func (archiveKind) TakesTranscoded(s *ferryv1.Step) bool {
	switch s.GetArchive().GetFormat() {
	case "", archive.FormatTar, archive.FormatTarGz, "tgz":
		return true
	}
	return false
}

func (archiveKind) Describe(s *ferryv1.Step) string { return "archive -> " + s.GetArchive().GetDest() }

func (archiveKind) KeepPrevious(s *ferryv1.Step) int { return int(s.GetArchive().GetKeepPrevious()) }

func (k archiveKind) Validate(r validateRequest) error {
	s := r.step.GetArchive()
	switch s.GetFormat() {
	case "", archive.FormatTar, archive.FormatTarGz, "tgz", archive.FormatZip:
	default:
		return fmt.Errorf("unknown archive format %q; use tar, tar.gz or zip", s.GetFormat())
	}
	if r.job.Package.GetArtifact().GetDigest() == "" {
		return errors.New("the package has an archive step but no artifact")
	}
	if r.job.ArtifactPath == "" && r.job.Stream == nil && !r.job.Plan {
		return errors.New("the job carries no artifact file for the archive step")
	}
	_, err := k.dest(s)
	return err
}

// dest resolves the step's dest and checks where it leads against the
// install policy: a symbolic link on the way must not make it a system
// directory, the agent's state directory or /etc/sudoers.d.
func (k archiveKind) dest(s *ferryv1.ArchiveStep) (resolved, error) {
	r, err := k.i.resolvePath(s.GetDest())
	if err != nil {
		return resolved{}, err
	}
	return r, policy("archive dest", s.GetDest(), r, func(p string) *installpolicy.Refusal {
		return installpolicy.ArchiveDest(p, k.i.stateNode)
	})
}

// archiveWork is what Plan and Apply both find out first.
type archiveWork struct {
	dest string // host path
	// current says what the step does to dest: "create ...", "replace
	// ..." or "repair ...".
	current string
	opts    archive.Options
	// intact is set when dest holds this very tree, untouched; tree is
	// its record.
	intact bool
	tree   treeRecord
}

func (k archiveKind) work(r stepRequest) (archiveWork, error) {
	s, jc := r.step.GetArchive(), r.job
	res, err := k.dest(s)
	if err != nil {
		return archiveWork{}, err
	}
	dest := res.host
	w := archiveWork{dest: dest, current: "create " + s.GetDest()}
	if st, err := os.Lstat(dest); err == nil {
		w.current = fmt.Sprintf("replace %s (not installed by Ferry, %v)", s.GetDest(), st.Mode().Type())
	}
	if tr, ok := jc.curTree(dest); ok {
		w.current = fmt.Sprintf("replace %s (%s %s)", s.GetDest(), jc.cur.Name, jc.cur.Version)
		if tr.Digest == jc.pkg.GetArtifact().GetDigest() && tr.Strip == s.GetStripComponents() && tr.AllowSetuid == s.GetAllowSetuid() {
			err := k.i.verifyTree(tr)
			if err == nil {
				w.intact, w.tree = true, tr
				return w, nil
			}
			w.current = fmt.Sprintf("repair %s (%v)", s.GetDest(), err)
		}
	}
	w.opts = archive.Options{
		Format:          s.GetFormat(),
		StripComponents: int(s.GetStripComponents()),
		MaxBytes:        k.i.maxBytes,
		MaxEntries:      k.i.maxEnts,
		AllowSetuid:     s.GetAllowSetuid(),
		Name:            jc.pkg.GetArtifact().GetName(),
		// Hashed as written, so the tree is not read again to be hashed
		// (RecordHashes) while other work wants the CPU.
		Hash: true,
	}
	if jc.format != "" {
		w.opts.Format = jc.format // the transcoded form
	}
	if s.GetMaxBytes() > 0 {
		w.opts.MaxBytes = int64(min(s.GetMaxBytes(), 1<<62))
	}
	if s.GetMaxEntries() > 0 {
		w.opts.MaxEntries = int64(min(s.GetMaxEntries(), 1<<62))
	}
	return w, nil
}

func (k archiveKind) Plan(ctx context.Context, r stepRequest) (stepResponse, error) {
	w, err := k.work(r)
	switch {
	case err != nil:
		return stepResponse{}, err
	case w.intact:
		return stepResponse{detail: "installed and intact"}, nil
	case r.job.artifact == "":
		return stepResponse{changed: true, detail: "would " + w.current + " from " + r.job.pkg.GetArtifact().GetName() + " (not downloaded yet, so not inspected)"}, nil
	}
	w.opts.DryRun = true
	res, err := archive.Extract(ctx, r.job.artifact, "", w.opts)
	if err != nil {
		return stepResponse{}, err
	}
	return stepResponse{changed: true, detail: fmt.Sprintf("would %s with %d entries, %d bytes", w.current, res.Entries, res.Bytes)}, nil
}

func (k archiveKind) Apply(ctx context.Context, r stepRequest) (stepResponse, error) {
	i, jc, idx, s := k.i, r.job, r.index, r.step.GetArchive()
	w, err := k.work(r)
	if err != nil {
		return stepResponse{}, err
	}
	if w.intact {
		jc.trees = append(jc.trees, w.tree)
		return stepResponse{detail: "installed and intact"}, nil
	}
	dest := w.dest
	hold := holdDir(dest)
	a := &action{
		Kind:    k.Change(),
		Step:    idx,
		Target:  dest,
		Stage:   filepath.Join(hold, fmt.Sprintf("stage-%s-%d", jc.key, idx)),
		Kept:    filepath.Join(hold, fmt.Sprintf("prev-%s-%d", jc.key, idx)),
		HasNew:  true,
		State:   "prepared",
		Created: missingDirs(hold),
	}
	if err := i.addAction(jc, "install", a); err != nil {
		return stepResponse{}, err
	}
	// Create dest's directories by walking to them again, so the tree is
	// built where dest was checked to lead.
	parent, err := i.openParent(dest, 0o755)
	if err != nil {
		return stepResponse{}, err
	}
	parentID, idErr := fileIDOf(parent)
	err = unix.Mkdirat(int(parent.Fd()), filepath.Base(hold), 0o700)
	_ = parent.Close() // read-only
	if idErr != nil {
		return stepResponse{}, fmt.Errorf("identify the directory of %s: %w", s.GetDest(), idErr)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return stepResponse{}, fmt.Errorf("create %s: %w", hold, err)
	}
	if err := os.Chmod(hold, 0o700); err != nil {
		return stepResponse{}, err
	}
	if err := os.RemoveAll(a.Stage); err != nil {
		return stepResponse{}, err
	}
	if err := os.Mkdir(a.Stage, 0o755); err != nil {
		return stepResponse{}, fmt.Errorf("create staging directory: %w", err)
	}
	res, err := k.extract(ctx, jc, a.Stage, w.opts)
	if err != nil {
		return stepResponse{}, err
	}
	m, err := archive.Scan(a.Stage)
	if err != nil {
		return stepResponse{}, err
	}
	m.SetHashes(res.Hashes) // any file without one is hashed after the job (RecordHashes)
	manifest := fmt.Sprintf("%s-%d", jc.key, idx)
	if err := writeFileSync(filepath.Join(i.dir, "manifests", manifest), m.Encode()); err != nil {
		return stepResponse{}, fmt.Errorf("record manifest: %w", err)
	}
	if err := syncFS(a.Stage); err != nil {
		return stepResponse{}, fmt.Errorf("flush the new tree to disk: %w", err)
	}
	i.at("archive:extracted")
	// Extracting takes a while: check again that dest leads where it did
	// and that its directory is the one the tree was built in, then
	// switch relative to that directory.
	parent, err = i.openParent(dest, 0)
	if err != nil {
		return stepResponse{}, err
	}
	defer func() { _ = parent.Close() }() // read-only
	id, err := fileIDOf(parent)
	if err != nil {
		return stepResponse{}, fmt.Errorf("identify the directory of %s: %w", s.GetDest(), err)
	}
	if id != parentID {
		return stepResponse{}, fmt.Errorf("the directory %s was replaced while the archive was extracted; nothing was switched in, run the job again", filepath.Dir(s.GetDest()))
	}
	a.NewID, _ = idOf(a.Stage)
	a.OldID, a.HadOld = idOf(dest)
	a.State = "switching"
	if err := jc.save(); err != nil {
		return stepResponse{}, err
	}
	if err := applyTree(a, parent); err != nil {
		return stepResponse{}, err
	}
	i.at("archive:switched")
	a.State = "applied"
	if err := jc.save(); err != nil {
		return stepResponse{}, err
	}
	jc.trees = append(jc.trees, treeRecord{Dest: dest, Digest: jc.pkg.GetArtifact().GetDigest(), Strip: s.GetStripComponents(), AllowSetuid: s.GetAllowSetuid(), Manifest: manifest})
	past := strings.Replace(strings.Replace(strings.Replace(w.current, "create", "created", 1), "replace", "replaced", 1), "repair", "repaired", 1)
	return stepResponse{changed: true, detail: fmt.Sprintf("%s: %d entries, %d bytes (%s)", past, res.Entries, res.Bytes, res.Format)}, nil
}

// extract builds the new tree in stage: from the artifact as it downloads
// when it is streamed, else from the verified file. A streamed tree is
// kept only when the download verified and the extraction read the very
// bytes verified; otherwise it is built again from the verified file (the
// download started over while it was read) or the step fails (the
// download failed), and nothing is switched in either way.
func (k archiveKind) extract(ctx context.Context, jc *jobCtx, stage string, opts archive.Options) (archive.Result, error) {
	if jc.stream == nil {
		return archive.Extract(ctx, jc.artifact, stage, opts)
	}
	r := jc.stream.Reader()
	res, err := archive.ExtractStream(ctx, r, stage, opts)
	_ = r.Close() // read-only
	if werr := jc.awaitArtifact(); werr != nil {
		return archive.Result{}, werr
	}
	switch {
	case errors.Is(err, archive.ErrNotStreamable): // a zip: extracted from the verified file
	case r.Verified():
		return res, err
	default:
		k.i.log.Info("the download started over while it was extracted; extracting the verified file again", "artifact", jc.pkg.GetArtifact().GetName())
	}
	if err := os.RemoveAll(stage); err != nil {
		return archive.Result{}, err
	}
	if err := os.Mkdir(stage, 0o755); err != nil {
		return archive.Result{}, fmt.Errorf("create staging directory: %w", err)
	}
	return archive.Extract(ctx, jc.artifact, stage, opts)
}

func (jc *jobCtx) curTree(dest string) (treeRecord, bool) {
	if jc.cur == nil {
		return treeRecord{}, false
	}
	for _, t := range jc.cur.Trees {
		if t.Dest == dest {
			return t, true
		}
	}
	return treeRecord{}, false
}

func (i *Installer) verifyTree(t treeRecord) error {
	b, err := os.ReadFile(filepath.Join(i.dir, "manifests", t.Manifest))
	if err != nil {
		return fmt.Errorf("manifest missing: %w", err)
	}
	m, err := archive.DecodeManifest(b)
	if err != nil {
		return err
	}
	return m.Verify(t.Dest)
}

// applyTree switches a staged tree in (or an installed one out). The
// action is in the journal with its identities before anything moves.
// parent, when not nil, is the target's directory, opened and verified
// by the caller: the renames are then made relative to it and to the
// hold directory opened from it, so a directory replaced after the check
// is not followed.
func applyTree(a *action, parent *os.File) error {
	at, done, err := treeDirs(a, parent)
	if err != nil {
		return err
	}
	defer done()
	rename := func(from, to string) error {
		fromDir, fromName := at(from)
		toDir, toName := at(to)
		if err := unix.Renameat(fromDir, fromName, toDir, toName); err != nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
		}
		return nil
	}
	switch {
	case a.HasNew && a.HadOld:
		stageDir, stage := at(a.Stage)
		targetDir, target := at(a.Target)
		err := exchangeAt(stageDir, stage, targetDir, target)
		if errors.Is(err, errExchangeUnsupported) {
			// Two renames; the journal lets a crash between them be undone.
			if err := rename(a.Target, a.Kept); err != nil {
				return fmt.Errorf("move %s aside: %w", a.Target, err)
			}
			if err := rename(a.Stage, a.Target); err != nil {
				return fmt.Errorf("switch %s in: %w", a.Target, err)
			}
		} else if err != nil {
			return fmt.Errorf("exchange %s and %s: %w", a.Stage, a.Target, err)
		} else if err := rename(a.Stage, a.Kept); err != nil {
			return fmt.Errorf("keep the previous %s: %w", a.Target, err)
		}
	case a.HasNew:
		if err := rename(a.Stage, a.Target); err != nil {
			return fmt.Errorf("switch %s in: %w", a.Target, err)
		}
	case a.HadOld:
		if err := rename(a.Target, a.Kept); err != nil {
			return fmt.Errorf("move %s aside: %w", a.Target, err)
		}
	}
	if parent != nil {
		return atomicfile.SyncOpenDir(parent)
	}
	return atomicfile.SyncDir(filepath.Dir(a.Target))
}

// treeDirs maps the paths of a tree switch to a directory and a name for
// the *at calls: with parent, names in the target's directory and in its
// hold directory (opened from parent, not following a link) are taken
// relative to those; without, paths are used as they are.
func treeDirs(a *action, parent *os.File) (at func(p string) (int, string), done func(), err error) {
	if parent == nil {
		return func(p string) (int, string) { return unix.AT_FDCWD, p }, func() {}, nil
	}
	hold := holdDir(a.Target)
	holdFD, err := unix.Openat(int(parent.Fd()), filepath.Base(hold), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: hold, Err: err}
	}
	parentFD := int(parent.Fd())
	at = func(p string) (int, string) {
		switch filepath.Dir(p) {
		case filepath.Dir(a.Target):
			return parentFD, filepath.Base(p)
		case hold:
			return holdFD, filepath.Base(p)
		}
		return unix.AT_FDCWD, p
	}
	return at, func() { closeFD(holdFD) }, nil
}

// Undo puts the trees of a tree switch back where they were.
func (archiveKind) Undo(r undoRequest) error {
	a := r.change
	if a.State == "prepared" {
		if !a.Preserve && a.HasNew {
			return os.RemoveAll(a.Stage)
		}
		return nil
	}
	locate := func(id fileID) string {
		for _, p := range []string{a.Target, a.Stage, a.Kept} {
			if got, ok := idOf(p); ok && got == id {
				return p
			}
		}
		return ""
	}
	newAt, oldAt := "", ""
	if a.HasNew {
		newAt = locate(a.NewID)
	}
	if a.HadOld {
		oldAt = locate(a.OldID)
		if oldAt == "" {
			return fmt.Errorf("the previous tree is gone from %s and %s; restore %s by hand", a.Target, a.Kept, a.Target)
		}
	}
	// Make room at the target, swapping when both trees exist so the
	// target is never missing.
	if newAt == a.Target {
		if oldAt != "" {
			err := exchange(oldAt, a.Target)
			if err == nil {
				newAt, oldAt = oldAt, a.Target
			} else if !errors.Is(err, errExchangeUnsupported) {
				return err
			}
		}
		if newAt == a.Target {
			aside := freeName(a.Stage, oldAt)
			if err := os.Rename(a.Target, aside); err != nil {
				return err
			}
			newAt = aside
		}
	}
	if oldAt != "" && oldAt != a.Target {
		if err := makeDirs(missingDirs(filepath.Dir(a.Target)), 0o755); err != nil {
			return err
		}
		if exists(a.Target) {
			return fmt.Errorf("%s is occupied by something Ferry did not put there; move it away and restart the agent", a.Target)
		}
		if err := os.Rename(oldAt, a.Target); err != nil {
			return err
		}
	}
	if newAt != "" && newAt != a.Target {
		if a.Preserve {
			if newAt != a.Stage {
				if err := os.Rename(newAt, a.Stage); err != nil {
					return err
				}
			}
		} else if err := os.RemoveAll(newAt); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(filepath.Dir(a.Target))
}

// freeName returns p, or a variant of it, that is neither taken nor avoid.
func freeName(p, avoid string) string {
	for n := 0; ; n++ {
		c := p
		if n > 0 {
			c = fmt.Sprintf("%s.%d", p, n)
		}
		if c != avoid && !exists(c) {
			return c
		}
	}
}

// Restore switches the tree an install kept back in, keeping the tree it
// replaces at its place should the rollback be undone.
func (k archiveKind) Restore(r restoreRequest) (restoreResponse, error) {
	a := r.change
	out := restoreResponse{detail: "previous tree switched back in"}
	if !a.HadOld {
		out.detail = "removed (it did not exist before)"
	}
	b, err := k.rollbackTree(r.job, a)
	if b != nil && b.HadOld {
		out.displaced = b.Kept
	}
	return out, err
}

func (k archiveKind) rollbackTree(jc *jobCtx, a *action) (*action, error) {
	b := &action{
		Kind:   k.Change(),
		Step:   a.Step,
		Target: a.Target,
		Kept:   filepath.Join(holdDir(a.Target), fmt.Sprintf("rb-%s-%d", jc.key, a.Step)),
		HasNew: a.HadOld,
		State:  "prepared",
	}
	if a.HadOld {
		id, ok := idOf(a.Kept)
		if !ok {
			return nil, fmt.Errorf("the kept previous tree %s is missing", a.Kept)
		}
		b.Stage, b.NewID, b.Preserve = a.Kept, id, true
	}
	b.OldID, b.HadOld = idOf(a.Target)
	if !b.HasNew && !b.HadOld {
		return b, nil
	}
	b.Created = missingDirs(holdDir(a.Target))
	if err := k.i.addAction(jc, "rollback", b); err != nil {
		return nil, err
	}
	if err := makeDirs(b.Created, 0o700); err != nil {
		return nil, err
	}
	b.State = "switching"
	if err := jc.save(); err != nil {
		return nil, err
	}
	if err := applyTree(b, nil); err != nil {
		return nil, err
	}
	k.i.at("rollback:switched")
	b.State = "applied"
	if err := jc.save(); err != nil {
		return nil, err
	}
	return b, nil
}

// Removal: the step's tree, as if it had not existed before.
func (k archiveKind) Removal(r stepRequest) (*action, error) {
	res, err := k.dest(r.step.GetArchive())
	if err != nil {
		return nil, err
	}
	return &action{Kind: k.Change(), Step: r.index, Target: res.host}, nil
}
