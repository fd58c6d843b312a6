// Package install turns a verified artifact and a package's steps into a
// working installation on the node: archive trees switched in with a
// rename, /etc/profile.d scripts, validated sudoers fragments, plain files
// and checks, all under the agent's install root.
//
// Guarantees:
//
//   - Every step reports changed or unchanged, can be planned (reporting
//     what it would change and changing nothing), and writes atomically
//     (temporary file or tree beside the target, fsync, rename).
//   - A job whose step or check fails undoes every step it applied, so the
//     node is as it was; the job reports the failed step and its output.
//   - A job for the version already installed, with its tree intact (a
//     manifest recorded at install time is compared, without hashing),
//     is a no-op that reports UNCHANGED.
//   - Before each change the job writes a journal. After a crash (SIGKILL
//     included) New undoes what the interrupted job applied, removes its
//     staging and reports it FAILED; no half-switched tree survives. Trees
//     are switched with renameat2(RENAME_EXCHANGE) where the file system
//     has it, so the destination is never missing even for an instant.
//   - What an install replaced is kept (keep_previous versions), and
//     Rollback restores it: tree, env file, sudoers file and files.
//   - Archive dests and file paths are checked where they lead, every
//     symbolic link on the way resolved under the install root, against
//     the same lists (shared/installpolicy) ferryctl package apply checks
//     by name, plus the agent's actual state directory; a step writes in
//     the directory a second walk just before the write opened, so a
//     directory swapped for a link after the check is not followed
//     (resolve.go).
//
// Each kind of step is one file (step_archive.go, step_env.go, ...)
// implementing the hooks in step.go, and one line in its registry,
// stepKinds; the job runner dispatches only through it.
//
// Checks and a non-"/" install root: env files are always written with the
// node's real paths (GOROOT='/usr/local/go'), because that is what login
// shells on the node must see. A check, though, must exercise the tree
// under the root. So under a root other than "/", a check sources a copy
// of each env file rendered with every absolute path (and each absolute
// element of a ':'-list) mapped under the root, runs in the root as its
// working directory, and gets FERRY_ROOT. Under "/" it sources the
// installed files themselves. Only the package's own env files (those of
// steps before the check) are sourced, not the whole of /etc/profile.
//
// Not done: files written by an older version's steps that a newer
// version no longer has are left in place (they are restored on rollback
// as they were).
package install

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
	"github.com/ferrydeploy/ferry/shared/sudoers"
)

// Config configures an Installer.
type Config struct {
	// Root is the install root; every step path resolves under it
	// (default "/").
	Root string
	// StateDir is the agent's state directory; records live in
	// StateDir/install. No step may write in it (nor replace a directory
	// holding it), wherever symbolic links lead.
	StateDir string
	Logger   *slog.Logger
	// MaxArchiveBytes and MaxArchiveEntries apply when a step sets no
	// limit (defaults 4 GiB and 200000).
	MaxArchiveBytes   int64
	MaxArchiveEntries int64
	// Visudo is the path of visudo; "" looks it up (sudoers.VisudoPath) and skips the
	// visudo checks when it is absent (Ferry's own check always runs).
	Visudo string
	// Shell runs checks and validates env files (default "sh" from PATH).
	Shell string
	// Systemctl is the path of systemctl for service steps; "" looks it up
	// in PATH when a service step runs.
	Systemctl string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Executable is the agent's own binary (symlinks resolved), which an
	// agent_update step replaces; "" refuses agent_update steps.
	Executable string
	// SweepInBackground removes what a successful install no longer keeps
	// (the tree before the previous one, its backups and manifest) on a
	// goroutine of its own after Install returned, so the job's result is
	// reported without waiting for a tree of thousands of files to be
	// deleted. The next job waits for it; Settle waits for it. Without
	// it Install removes them itself before it returns.
	SweepInBackground bool
}

// Request is one install (or plan) job.
type Request struct {
	JobID, RolloutID string
	Package          *ferryv1.Package
	// ArtifactPath is the verified artifact on disk; "" when no step of
	// the package uses it (NeedsArtifact), or when Stream brings it.
	ArtifactPath string
	// ArtifactFormat, when set, is the archive format of the artifact the
	// job carries, whatever the steps say: archive.FormatTarZst for the
	// zstd form the controller transcoded the original into (the same tar
	// stream; see TakesTranscoded).
	ArtifactFormat string
	// Stream, when set (and ArtifactPath is not), is the artifact still
	// downloading: an archive step extracts it as it arrives and switches
	// the tree in only once the whole file is verified; every other step
	// waits for the verified file first.
	Stream ArtifactStream
	// Plan reports what would change and changes nothing.
	Plan bool
}

// Installer runs install, plan and rollback jobs, one at a time.
type Installer struct {
	root     string
	realRoot string
	dir      string // StateDir/install
	log      *slog.Logger
	now      func() time.Time
	visudo   string
	// systemctlPath is Config.Systemctl.
	systemctlPath string
	shell         string
	maxBytes      int64
	maxEnts       int64
	kinds         map[protoreflect.Name]stepKind
	// exe is the agent's own executable (agent_update steps).
	exe string

	// stateNode is the state directory as a node path, "" when it is
	// outside the install root (no step path can reach it then).
	stateNode string

	run sync.Mutex // held for the whole of a job

	// sweepInBackground is Config.SweepInBackground; sweeps counts the
	// removals running in the background (Add under run, so no job starts
	// while one runs: each waits for them first).
	sweepInBackground bool
	sweeps            sync.WaitGroup

	// hook, when set by tests, is called at named points of a job (to
	// simulate a crash there).
	hook func(point string)

	mu          sync.Mutex // guards the fields below
	st          *state
	results     map[string]*ferryv1.JobUpdate
	interrupted []*ferryv1.JobUpdate
	staged      map[string]*AgentUpdate // by job: new agent binaries to swap in
}

// New validates cfg, loads the records, undoes and reports any job a crash
// interrupted, and removes staging and backups nothing refers to.
func New(cfg Config) (*Installer, error) {
	root := cfg.Root
	if root == "" {
		root = "/"
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("install root %q must be an absolute path", root)
	}
	root = filepath.Clean(root)
	if st, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("install root %s is not a directory: %w", root, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("install root %s is not a directory", root)
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("install root %s: %w", root, err)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("install: StateDir is required")
	}
	i := &Installer{
		root:     root,
		realRoot: realRoot,
		dir:      filepath.Join(cfg.StateDir, "install"),
		log:      cfg.Logger,
		now:      cfg.Now,
		maxBytes: cfg.MaxArchiveBytes,
		maxEnts:  cfg.MaxArchiveEntries,
		results:  map[string]*ferryv1.JobUpdate{},
		exe:      cfg.Executable,
		staged:   map[string]*AgentUpdate{},

		sweepInBackground: cfg.SweepInBackground,
	}
	i.kinds = stepKinds(i)
	if i.log == nil {
		i.log = slog.New(slog.DiscardHandler)
	}
	if i.now == nil {
		i.now = time.Now
	}
	if i.maxBytes <= 0 {
		i.maxBytes = 4 << 30
	}
	if i.maxEnts <= 0 {
		i.maxEnts = 200000
	}
	i.shell = cfg.Shell
	i.systemctlPath = cfg.Systemctl
	if i.shell == "" {
		if i.shell, err = exec.LookPath("sh"); err != nil {
			return nil, fmt.Errorf("install: no sh in PATH to run checks and validate env files: %w", err)
		}
	}
	switch {
	case cfg.Visudo != "":
		if _, err := os.Stat(cfg.Visudo); err != nil {
			return nil, fmt.Errorf("install: visudo %s: %w", cfg.Visudo, err)
		}
		i.visudo = cfg.Visudo
	default:
		i.visudo, _ = sudoers.VisudoPath() // absent: Ferry's own checker only
	}
	for _, d := range []string{i.dir, filepath.Join(i.dir, "jobs"), filepath.Join(i.dir, "backups"), filepath.Join(i.dir, "manifests")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("install state dir: %w", err)
		}
	}
	if err := os.RemoveAll(filepath.Join(i.dir, "tmp")); err != nil {
		return nil, fmt.Errorf("clean install tmp dir: %w", err)
	}
	if err := os.Mkdir(filepath.Join(i.dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("install tmp dir: %w", err)
	}
	realState, err := filepath.EvalSymlinks(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("install state dir: %w", err)
	}
	switch {
	case realRoot == "/":
		i.stateNode = realState
	case installpolicy.Within(realState, realRoot):
		i.stateNode = "/" + strings.TrimPrefix(realState[len(realRoot):], "/")
	}
	if err := i.loadState(); err != nil {
		return nil, err
	}
	if err := i.recover(); err != nil {
		return nil, err
	}
	i.gc()
	return i, nil
}

// Installed lists the installed packages, by name.
func (i *Installer) Installed() []*ferryv1.InstalledPackage {
	i.mu.Lock()
	defer i.mu.Unlock()
	var out []*ferryv1.InstalledPackage
	for name, rs := range i.st.Packages {
		if len(rs) == 0 {
			continue
		}
		r := rs[len(rs)-1]
		p := &ferryv1.InstalledPackage{
			Name:           name,
			Version:        r.Version,
			ArtifactDigest: r.ArtifactDigest,
			InstalledAt:    timestamppb.New(r.InstalledAt),
		}
		if !r.Pruned && len(rs) > 1 {
			p.PreviousVersion = rs[len(rs)-2].Version
		}
		p.Pruned = r.Pruned
		out = append(out, p)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].GetName() < out[b].GetName() })
	return out
}

// Interrupted returns the jobs a crash interrupted, found by New; each was
// undone and is reported FAILED.
func (i *Installer) Interrupted() []*ferryv1.JobUpdate {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]*ferryv1.JobUpdate, len(i.interrupted))
	for k, u := range i.interrupted {
		out[k] = proto.Clone(u).(*ferryv1.JobUpdate)
	}
	return out
}

// JobResult returns the final result of a job already run (the last 200
// are kept), so a job is never run twice.
func (i *Installer) JobResult(jobID string) (*ferryv1.JobUpdate, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	u, ok := i.results[jobID]
	if !ok {
		return nil, false
	}
	return proto.Clone(u).(*ferryv1.JobUpdate), true
}

// RecentResults returns the kept final results, oldest first, for the
// agent's hello.
func (i *Installer) RecentResults() []*ferryv1.JobUpdate {
	i.mu.Lock()
	defer i.mu.Unlock()
	var out []*ferryv1.JobUpdate
	for _, r := range i.st.Results {
		if u, ok := i.results[r.JobID]; ok {
			out = append(out, proto.Clone(u).(*ferryv1.JobUpdate))
		}
	}
	return out
}

// Record keeps a final result the installer did not produce (a download
// that failed, a job kind this agent does not run) as it keeps its own: in
// state.json, so the next hello reports it and a job sent again gets it
// instead of running again. A job's first recorded result stands.
func (i *Installer) Record(u *ferryv1.JobUpdate) error {
	if u.GetJobId() == "" {
		return errors.New("record job result: it names no job")
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if _, ok := i.results[u.GetJobId()]; ok {
		return nil
	}
	i.addResult(u)
	if err := i.saveState(); err != nil {
		return fmt.Errorf("record the result of job %s: %w", u.GetJobId(), err)
	}
	return nil
}

// Destinations lists where the installed packages' archives lie (host
// paths), for reporting the free space of their file systems.
func (i *Installer) Destinations() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	var out []string
	for _, rs := range i.st.Packages {
		if len(rs) == 0 {
			continue
		}
		for _, t := range rs[len(rs)-1].Trees {
			out = append(out, t.Dest)
		}
	}
	sort.Strings(out)
	return out
}

// jobKey turns any job ID into a safe, fixed-length file name part.
func jobKey(jobID string) string {
	h := sha256.Sum256([]byte(jobID))
	return hex.EncodeToString(h[:8])
}

func holdDir(dest string) string {
	return filepath.Join(filepath.Dir(dest), ".ferry-"+filepath.Base(dest))
}

// recover undoes the jobs whose journals a crash left behind.
func (i *Installer) recover() error {
	dir := filepath.Join(i.dir, "jobs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read job journals: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			// A journal's temporary file.
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				i.log.Warn("could not remove a job journal's temporary file", "path", p, "err", err)
			}
			continue
		}
		j, err := readJournal(p)
		if err != nil {
			i.log.Error("unreadable job journal; moving it aside", "path", p, "err", err)
			if err := os.Rename(p, p+".corrupt"); err != nil {
				i.log.Error("could not move the unreadable job journal aside; it is read again at the next start", "path", p, "err", err)
			}
			continue
		}
		if _, done := i.results[j.JobID]; done {
			// Committed before the crash; only the journal was left. It
			// must go: once the result ages out of the history, a journal
			// still there would be taken for an interrupted job and undone.
			if err := j.remove(); err != nil {
				return err
			}
			continue
		}
		var undoErrs []error
		for _, a := range i.undoOrder(j.Actions) {
			if err := i.undoAction(a); err != nil {
				undoErrs = append(undoErrs, err)
			}
		}
		if j.Downloading && len(undoErrs) == 0 {
			// Stopped while the artifact streamed in: as a download
			// interrupted before the install, the job is not over.
			i.log.Info("removed the staging tree of a job interrupted while its artifact downloaded; the download resumes when the job is sent again", "job", j.JobID, "rollout", j.RolloutID, "package", j.Package)
			if err := j.remove(); err != nil {
				return err
			}
			continue
		}
		msg := fmt.Sprintf("interrupted: the agent stopped during this %s job (crash, kill or power loss); %s", j.Kind, changesUndone(len(j.Actions), "it had applied"))
		if len(undoErrs) > 0 {
			msg = fmt.Sprintf("interrupted: the agent stopped during this %s job, and undoing its changes failed: %v", j.Kind, errors.Join(undoErrs...))
		}
		i.log.Warn("undid a job interrupted by a restart", "job", j.JobID, "rollout", j.RolloutID, "package", j.Package, "version", j.Version, "changes", len(j.Actions), "undo_errors", len(undoErrs))
		u := &ferryv1.JobUpdate{
			JobId:     j.JobID,
			RolloutId: j.RolloutID,
			Phase:     ferryv1.JobPhase_JOB_PHASE_FAILED,
			Message:   msg,
			At:        timestamppb.New(i.now()),
		}
		i.mu.Lock()
		i.addResult(u)
		i.interrupted = append(i.interrupted, u)
		err = i.saveState()
		i.mu.Unlock()
		if err != nil {
			return err
		}
		if len(undoErrs) == 0 {
			if err := j.remove(); err != nil {
				return err
			}
		} else if err := os.Rename(p, p+".failed-undo"); err != nil {
			// Left as it is, the journal would be undone and reported again
			// at every start.
			return fmt.Errorf("set aside the journal of job %s, whose undo failed: %w", j.JobID, err)
		}
	}
	return nil
}

// gc removes what no record refers to: staging and displaced trees in the
// hold directories, backups and manifests. Only New calls it, before any
// job runs.
func (i *Installer) gc() {
	keep := map[string]bool{}
	holds := map[string]bool{}
	for _, h := range i.st.HoldDirs {
		holds[h] = true
	}
	for _, rs := range i.st.Packages {
		for _, r := range rs {
			for _, t := range r.Trees {
				holds[holdDir(t.Dest)] = true
				keep[filepath.Join(i.dir, "manifests", t.Manifest)] = true
			}
			for _, a := range r.Undo {
				keep[a.Kept] = true
				keep[a.Backup] = true
				if d := a.keptIn(); d != "" {
					holds[d] = true
				}
			}
		}
	}
	remove := func(p string) {
		if err := os.RemoveAll(p); err != nil {
			i.log.Warn("could not remove leftover", "path", p, "err", err)
		} else {
			i.log.Info("removed leftover", "path", p)
		}
	}
	var live []string
	for h := range holds {
		ents, err := os.ReadDir(h)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if p := filepath.Join(h, e.Name()); !keep[p] {
				remove(p)
			}
		}
		if err := os.Remove(h); err != nil {
			live = append(live, h) // still holds kept trees
		}
	}
	sort.Strings(live)
	for _, sub := range []string{"backups", "manifests"} {
		ents, _ := os.ReadDir(filepath.Join(i.dir, sub))
		for _, e := range ents {
			if p := filepath.Join(i.dir, sub, e.Name()); !keep[p] {
				remove(p)
			}
		}
	}
	i.mu.Lock()
	i.st.HoldDirs = live
	if err := i.saveState(); err != nil {
		// Only the list of hold directories is stale: the next gc reads
		// them again and skips the ones that are gone.
		i.log.Error("could not record the cleaned-up hold directories", "err", err)
	}
	i.mu.Unlock()
}

func (i *Installer) at(point string) {
	if i.hook != nil {
		i.hook(point)
	}
}

// sweep removes garbage, then the directories of dirs that are left
// empty: what a successful job no longer keeps. The state committed
// before it names none of it, so a crash half-way leaves leftovers that
// the next start's gc removes. With SweepInBackground it runs on its own
// goroutine, after the job's result is reported; i.run is held (by the
// job that calls it), so no other job starts before Add.
func (i *Installer) sweep(garbage, dirs []string) {
	run := func() {
		i.at("sweep")
		removeAll(i.log, garbage)
		for _, d := range dirs {
			removeIfEmpty(d)
		}
	}
	if !i.sweepInBackground {
		run()
		return
	}
	i.sweeps.Add(1)
	go func() {
		defer i.sweeps.Done()
		run()
	}()
}

// Settle waits until what finished jobs left to remove in the background
// (Config.SweepInBackground) is removed. A job waits for it before it
// starts; the agent, before it exits.
func (i *Installer) Settle() { i.sweeps.Wait() }

func removeAll(log *slog.Logger, paths []string) {
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("could not remove", "path", p, "err", err)
		}
	}
}

func (i *Installer) update(jc *jobCtx, phase ferryv1.JobPhase, msg string) *ferryv1.JobUpdate {
	u := &ferryv1.JobUpdate{
		JobId:     jc.jobID,
		RolloutId: jc.rolloutID,
		Phase:     phase,
		Message:   msg,
		At:        timestamppb.New(i.now()),
	}
	for _, r := range jc.results {
		u.Steps = append(u.Steps, proto.Clone(r).(*ferryv1.StepResult))
	}
	return u
}

// changesUndone is "the change already applied was undone" or "the 3
// changes already applied were undone".
func changesUndone(n int, which string) string {
	if n == 1 {
		return "the change " + which + " was undone"
	}
	return fmt.Sprintf("the %d changes %s were undone", n, which)
}
