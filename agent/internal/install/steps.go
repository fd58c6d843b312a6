package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrydeploy/ferry/agent/internal/install/archive"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sudoers"
)

// validateStep checks what can be checked before anything is touched, so
// a bad sudoers rule in step 3 fails the job before step 1 extracts.
func (i *Installer) validateStep(req Request, s *ferryv1.Step) error {
	switch k := s.GetKind().(type) {
	case *ferryv1.Step_Archive:
		if _, err := i.resolve(k.Archive.GetDest()); err != nil {
			return err
		}
		switch k.Archive.GetFormat() {
		case "", archive.FormatTar, archive.FormatTarGz, "tgz", archive.FormatZip:
		default:
			return fmt.Errorf("unknown archive format %q; use tar, tar.gz or zip", k.Archive.GetFormat())
		}
		if req.Package.GetArtifact().GetDigest() == "" {
			return errors.New("the package has an archive step but no artifact")
		}
		if req.ArtifactPath == "" && !req.Plan {
			return errors.New("the job carries no artifact file for the archive step")
		}
	case *ferryv1.Step_Env:
		return validateEnv(k.Env)
	case *ferryv1.Step_Sudoers:
		if err := validateSudoersName(k.Sudoers.GetName()); err != nil {
			return err
		}
		return sudoers.Check(string(renderSudoers(req.Package.GetName(), k.Sudoers)))
	case *ferryv1.Step_File:
		if _, err := i.resolve(k.File.GetPath()); err != nil {
			return err
		}
		if k.File.GetMode() > 0o7777 {
			return fmt.Errorf("mode %o has bits beyond 07777", k.File.GetMode())
		}
		if _, _, err := lookupOwner(k.File.GetOwner(), k.File.GetGroup()); err != nil {
			return err
		}
	case *ferryv1.Step_Check:
		if strings.TrimSpace(k.Check.GetRun()) == "" {
			return errors.New("check has no command")
		}
		if k.Check.GetTimeout().AsDuration() < 0 {
			return errors.New("negative timeout")
		}
	default:
		return errors.New("step has no kind (archive, env, sudoers, file or check)")
	}
	return nil
}

func (i *Installer) stepArchive(jc *jobCtx, idx int, s *ferryv1.ArchiveStep) (stepOut, error) {
	dest, err := i.resolve(s.GetDest())
	if err != nil {
		return stepOut{}, err
	}
	digest := jc.pkg.GetArtifact().GetDigest()
	current := "create " + s.GetDest()
	if st, err := os.Lstat(dest); err == nil {
		current = fmt.Sprintf("replace %s (not installed by Ferry, %v)", s.GetDest(), st.Mode().Type())
	}
	if tr, ok := jc.curTree(dest); ok {
		current = fmt.Sprintf("replace %s (%s %s)", s.GetDest(), jc.cur.Name, jc.cur.Version)
		if tr.Digest == digest && tr.Strip == s.GetStripComponents() && tr.AllowSetuid == s.GetAllowSetuid() {
			err := i.verifyTree(tr)
			if err == nil {
				jc.trees = append(jc.trees, tr)
				return stepOut{detail: "installed and intact"}, nil
			}
			current = fmt.Sprintf("repair %s (%v)", s.GetDest(), err)
		}
	}
	opts := archive.Options{
		Format:          s.GetFormat(),
		StripComponents: int(s.GetStripComponents()),
		MaxBytes:        i.maxBytes,
		MaxEntries:      i.maxEnts,
		AllowSetuid:     s.GetAllowSetuid(),
	}
	if s.GetMaxBytes() > 0 {
		opts.MaxBytes = int64(min(s.GetMaxBytes(), 1<<62))
	}
	if s.GetMaxEntries() > 0 {
		opts.MaxEntries = int64(min(s.GetMaxEntries(), 1<<62))
	}
	if jc.plan {
		if jc.artifact == "" {
			return stepOut{changed: true, detail: "would " + current + " from " + jc.pkg.GetArtifact().GetName() + " (not downloaded yet, so not inspected)"}, nil
		}
		opts.DryRun = true
		res, err := archive.Extract(jc.ctx, jc.artifact, "", opts)
		if err != nil {
			return stepOut{}, err
		}
		return stepOut{changed: true, detail: fmt.Sprintf("would %s with %d entries, %d bytes", current, res.Entries, res.Bytes)}, nil
	}

	hold := holdDir(dest)
	a := &action{
		Kind:    "tree",
		Step:    idx,
		Target:  dest,
		Stage:   filepath.Join(hold, fmt.Sprintf("stage-%s-%d", jc.key, idx)),
		Kept:    filepath.Join(hold, fmt.Sprintf("prev-%s-%d", jc.key, idx)),
		HasNew:  true,
		State:   "prepared",
		Created: missingDirs(hold),
	}
	if err := i.addAction(jc, "install", a); err != nil {
		return stepOut{}, err
	}
	if err := makeDirs(a.Created, 0o755); err != nil {
		return stepOut{}, fmt.Errorf("create %s: %w", filepath.Dir(dest), err)
	}
	if err := os.Chmod(hold, 0o700); err != nil {
		return stepOut{}, err
	}
	if err := os.RemoveAll(a.Stage); err != nil {
		return stepOut{}, err
	}
	if err := os.Mkdir(a.Stage, 0o755); err != nil {
		return stepOut{}, fmt.Errorf("create staging directory: %w", err)
	}
	res, err := archive.Extract(jc.ctx, jc.artifact, a.Stage, opts)
	if err != nil {
		return stepOut{}, err
	}
	m, err := archive.Scan(a.Stage)
	if err != nil {
		return stepOut{}, err
	}
	manifest := fmt.Sprintf("%s-%d", jc.key, idx)
	if err := writeFileSync(filepath.Join(i.dir, "manifests", manifest), m.Encode(), 0o600); err != nil {
		return stepOut{}, fmt.Errorf("record manifest: %w", err)
	}
	if err := syncFS(a.Stage); err != nil {
		return stepOut{}, fmt.Errorf("flush the new tree to disk: %w", err)
	}
	i.at("archive:extracted")
	a.NewID, _ = idOf(a.Stage)
	a.OldID, a.HadOld = idOf(dest)
	a.State = "switching"
	if err := jc.save(); err != nil {
		return stepOut{}, err
	}
	if err := applyTree(a); err != nil {
		return stepOut{}, err
	}
	i.at("archive:switched")
	a.State = "applied"
	if err := jc.save(); err != nil {
		return stepOut{}, err
	}
	jc.trees = append(jc.trees, treeRecord{Dest: dest, Digest: digest, Strip: s.GetStripComponents(), AllowSetuid: s.GetAllowSetuid(), Manifest: manifest})
	past := strings.Replace(strings.Replace(strings.Replace(current, "create", "created", 1), "replace", "replaced", 1), "repair", "repaired", 1)
	return stepOut{changed: true, detail: fmt.Sprintf("%s: %d entries, %d bytes (%s)", past, res.Entries, res.Bytes, res.Format)}, nil
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

// missingDirs lists the ancestors of (and including) dir that do not
// exist, outermost first.
func missingDirs(dir string) []string {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
		if d == filepath.Dir(d) {
			break
		}
	}
	return missing
}

func makeDirs(dirs []string, perm fs.FileMode) error {
	for _, d := range dirs {
		if err := os.Mkdir(d, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// wantFile describes a file a step manages.
type wantFile struct {
	target   string // host path
	data     []byte
	mode     fs.FileMode
	uid, gid int // -1: keep the current owner (root for a new file)
	dirMode  fs.FileMode
	// validate runs on a private copy before anything is replaced.
	validate func(path string) error
}

func (i *Installer) writeStep(jc *jobCtx, idx int, label string, w wantFile) (stepOut, error) {
	st, err := os.Lstat(w.target)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return stepOut{}, err
	}
	var cur []byte
	curUID, curGID := -1, -1
	if existed {
		if !st.Mode().IsRegular() {
			return stepOut{}, fmt.Errorf("%s exists and is a %v, not a regular file; Ferry will not replace it", label, st.Mode().Type())
		}
		if cur, err = os.ReadFile(w.target); err != nil {
			return stepOut{}, err
		}
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			curUID, curGID = int(s.Uid), int(s.Gid)
		}
	}
	var diffs []string
	if existed {
		if !bytes.Equal(cur, w.data) {
			diffs = append(diffs, "content")
		}
		if m := st.Mode() & permMask; m != w.mode {
			diffs = append(diffs, fmt.Sprintf("mode %04o -> %04o", unixMode(m), unixMode(w.mode)))
		}
		if (w.uid >= 0 && w.uid != curUID) || (w.gid >= 0 && w.gid != curGID) {
			diffs = append(diffs, fmt.Sprintf("owner %d:%d -> %d:%d", curUID, curGID, w.uid, w.gid))
		}
		if len(diffs) == 0 {
			return stepOut{detail: "unchanged"}, nil
		}
	}
	if w.validate != nil {
		tmp := filepath.Join(i.dir, "tmp", fmt.Sprintf("%s-%d", jc.key, idx))
		if err := os.WriteFile(tmp, w.data, 0o600); err != nil {
			return stepOut{}, err
		}
		err := w.validate(tmp)
		os.Remove(tmp)
		if err != nil {
			return stepOut{}, err
		}
	}
	what := fmt.Sprintf("create %s (%d bytes, mode %04o)", label, len(w.data), unixMode(w.mode))
	if existed {
		what = fmt.Sprintf("update %s (%s)", label, strings.Join(diffs, ", "))
	}
	if jc.plan {
		return stepOut{changed: true, detail: "would " + what}, nil
	}
	a := &action{
		Kind:    "file",
		Step:    idx,
		Target:  w.target,
		Temp:    filepath.Join(filepath.Dir(w.target), "."+filepath.Base(w.target)+".ferry-tmp"),
		Existed: existed,
		State:   "prepared",
		Created: missingDirs(filepath.Dir(w.target)),
	}
	if existed {
		a.Backup = filepath.Join(i.dir, "backups", fmt.Sprintf("%s-%d", jc.key, idx))
		a.Mode = st.Mode() & permMask
		a.UID, a.GID = curUID, curGID
		if err := writeFileSync(a.Backup, cur, 0o600); err != nil {
			return stepOut{}, fmt.Errorf("back up %s: %w", label, err)
		}
	}
	if err := i.addAction(jc, "install", a); err != nil {
		return stepOut{}, err
	}
	if err := makeDirs(a.Created, w.dirMode); err != nil {
		return stepOut{}, fmt.Errorf("create %s: %w", filepath.Dir(w.target), err)
	}
	uid, gid := w.uid, w.gid
	if uid < 0 {
		uid = curUID
	}
	if gid < 0 {
		gid = curGID
	}
	i.at("file:prepared")
	if err := writeAtomic(w.target, a.Temp, w.data, w.mode, uid, gid); err != nil {
		return stepOut{}, fmt.Errorf("write %s: %w", label, err)
	}
	i.at("file:written")
	a.State = "applied"
	if err := jc.save(); err != nil {
		return stepOut{}, err
	}
	return stepOut{changed: true, detail: strings.Replace(strings.Replace(what, "create", "created", 1), "update", "updated", 1)}, nil
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

func (i *Installer) stepEnv(jc *jobCtx, idx int, s *ferryv1.EnvStep) (stepOut, error) {
	label := "/etc/profile.d/" + s.GetName() + ".sh"
	target, err := i.resolve(label)
	if err != nil {
		return stepOut{}, err
	}
	out, err := i.writeStep(jc, idx, label, wantFile{
		target: target, data: renderEnv(jc.pkg.GetName(), s, func(v string) string { return v }),
		mode: 0o644, uid: -1, gid: -1, dirMode: 0o755,
		validate: i.shellSyntax,
	})
	if err == nil {
		jc.envs = append(jc.envs, s)
	}
	return out, err
}

// shellSyntax runs sh -n on a script.
func (i *Installer) shellSyntax(p string) error {
	out, err := exec.Command(i.shell, "-n", p).CombinedOutput()
	if err != nil {
		return fmt.Errorf("generated profile script fails sh -n: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (i *Installer) stepSudoers(jc *jobCtx, idx int, s *ferryv1.SudoersStep) (stepOut, error) {
	if err := validateSudoersName(s.GetName()); err != nil {
		return stepOut{}, err
	}
	label := "/etc/sudoers.d/" + s.GetName()
	target, err := i.resolve(label)
	if err != nil {
		return stepOut{}, err
	}
	data := renderSudoers(jc.pkg.GetName(), s)
	if err := sudoers.Check(string(data)); err != nil {
		return stepOut{}, err
	}
	uid, gid := 0, 0
	if os.Geteuid() != 0 {
		uid, gid = -1, -1 // only root can hand files to root; the agent runs as root
	}
	return i.writeStep(jc, idx, label, wantFile{
		target: target, data: data, mode: 0o440, uid: uid, gid: gid, dirMode: 0o750,
		validate: i.visudoCheck,
	})
}

func (i *Installer) visudoCheck(p string) error {
	if i.visudo == "" {
		return nil
	}
	if err := os.Chmod(p, 0o440); err != nil {
		return err
	}
	out, err := exec.Command(i.visudo, "-cf", p).CombinedOutput()
	if err != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(string(out)), p, "fragment")
		return fmt.Errorf("visudo -cf refuses the fragment: %s", msg)
	}
	return nil
}

func (i *Installer) stepFile(jc *jobCtx, idx int, s *ferryv1.FileStep) (stepOut, error) {
	target, err := i.resolve(s.GetPath())
	if err != nil {
		return stepOut{}, err
	}
	uid, gid, err := lookupOwner(s.GetOwner(), s.GetGroup())
	if err != nil {
		return stepOut{}, err
	}
	mode := s.GetMode()
	if mode == 0 {
		mode = 0o644
	}
	return i.writeStep(jc, idx, s.GetPath(), wantFile{
		target: target, data: s.GetContent(), mode: fileMode(mode), uid: uid, gid: gid, dirMode: 0o755,
	})
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
