package install

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// jobCtx is the state of one running job.
type jobCtx struct {
	ctx       context.Context
	jobID     string
	rolloutID string
	key       string
	pkg       *ferryv1.Package
	artifact  string
	format    string         // Request.ArtifactFormat
	stream    ArtifactStream // Request.Stream, until the artifact is verified
	plan      bool
	cur       *record // the package's installed record before the job
	j         *journal
	trees     []treeRecord
	results   []*ferryv1.StepResult
	changed   bool
	progress  func(*ferryv1.JobUpdate)
	logf      LogFunc
}

// addAction journals a change before it is made.
func (i *Installer) addAction(jc *jobCtx, kind string, a *action) error {
	if jc.j == nil {
		jc.j = &journal{
			JobID:     jc.jobID,
			RolloutID: jc.rolloutID,
			Kind:      kind,
			Package:   jc.pkg.GetName(),
			Version:   jc.pkg.GetVersion(),
			path:      filepath.Join(i.dir, "jobs", jc.key+".json"),
			// Only an archive's staging tree is built before a streamed
			// artifact is verified (awaitArtifact clears it).
			Downloading: jc.stream != nil,
		}
	}
	jc.j.Actions = append(jc.j.Actions, a)
	return jc.j.save()
}

func (jc *jobCtx) save() error {
	if jc.j == nil {
		return nil
	}
	return jc.j.save()
}

func (jc *jobCtx) actions() []*action {
	if jc.j == nil {
		return nil
	}
	return jc.j.Actions
}

// Install runs the package's steps in order (or plans them). On any
// failure it undoes the steps it applied so the node is as before.
// progress receives intermediate updates, logf output lines; both may be
// nil.
func (i *Installer) Install(ctx context.Context, req Request, progress func(*ferryv1.JobUpdate), logf LogFunc) *ferryv1.JobUpdate {
	if progress == nil {
		progress = func(*ferryv1.JobUpdate) {}
	}
	if logf == nil {
		logf = func(LogLine) {}
	}
	jc := &jobCtx{
		ctx:       ctx,
		jobID:     req.JobID,
		rolloutID: req.RolloutID,
		key:       jobKey(req.JobID),
		pkg:       req.Package,
		artifact:  req.ArtifactPath,
		format:    req.ArtifactFormat,
		stream:    req.Stream,
		plan:      req.Plan,
		progress:  progress,
		logf:      logf,
	}
	if req.JobID == "" {
		return i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, "job has no ID")
	}
	i.run.Lock()
	defer i.run.Unlock()
	i.Settle() // the last job's garbage first: it may be in the hold directories this one uses
	if u, ok := i.JobResult(req.JobID); ok {
		return u
	}
	log := i.log.With("job", req.JobID, "rollout", req.RolloutID, "package", req.Package.GetName(), "version", req.Package.GetVersion())
	if err := i.validate(req); err != nil {
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, err.Error()), nil)
	}
	i.mu.Lock()
	jc.cur = i.current(req.Package.GetName())
	i.mu.Unlock()

	progress(i.update(jc, ferryv1.JobPhase_JOB_PHASE_INSTALLING, ""))
	for idx, step := range req.Package.GetSteps() {
		if _, k := i.kindOf(step); !streams(k) || jc.plan {
			// Nothing but an archive's staging tree is built before the
			// artifact is verified.
			if err := jc.awaitArtifact(); err != nil {
				return i.fail(jc, DownloadStep(req.Package), err)
			}
		}
		res, err := i.runStep(jc, idx, step)
		if errors.As(err, new(*DownloadError)) {
			log.Warn("download failed while extracting; undoing the job", "err", err)
			return i.fail(jc, DownloadStep(req.Package), err)
		}
		if err != nil {
			log.Warn("step failed; undoing the job", "step", res.GetName(), "err", err)
			return i.fail(jc, res.GetName(), err)
		}
	}
	if err := jc.awaitArtifact(); err != nil {
		return i.fail(jc, DownloadStep(req.Package), err)
	}
	if jc.plan {
		var n int
		for _, r := range jc.results {
			if r.GetChanged() {
				n++
			}
		}
		if n == 0 {
			return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, "plan: nothing would change"), nil)
		}
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, fmt.Sprintf("plan: %d of %d steps would change the node", n, len(jc.results))), nil)
	}
	name, version := req.Package.GetName(), req.Package.GetVersion()
	same := jc.cur != nil && jc.cur.Version == version && jc.cur.ContentDigest == req.Package.GetContentDigest() &&
		jc.cur.ArtifactDigest == req.Package.GetArtifact().GetDigest()
	if !jc.changed && same {
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, fmt.Sprintf("%s %s is installed and intact", name, version)), nil)
	}
	pkgBytes, err := proto.Marshal(req.Package)
	if err != nil {
		return i.fail(jc, "", fmt.Errorf("record package: %w", err))
	}
	rec := &record{
		Name:           name,
		Version:        version,
		ArtifactDigest: req.Package.GetArtifact().GetDigest(),
		ContentDigest:  req.Package.GetContentDigest(),
		InstalledAt:    i.now(),
		JobID:          req.JobID,
		Package:        pkgBytes,
		Trees:          jc.trees,
		Undo:           slices.Clone(jc.actions()),
	}
	if jc.cur != nil {
		rec.PreviousVersion = jc.cur.Version
	}
	msg := fmt.Sprintf("installed %s %s", name, version)
	if jc.cur != nil && jc.cur.Version != version {
		msg = fmt.Sprintf("upgraded %s from %s to %s", name, jc.cur.Version, version)
	} else if jc.cur != nil {
		msg = fmt.Sprintf("repaired %s %s", name, version)
	}
	if !jc.changed {
		msg = fmt.Sprintf("recorded %s %s; no step changed anything", name, version)
	}
	i.at("commit")
	keep := i.keepPrevious(req.Package)
	var garbage []string
	u := i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, msg), func() {
		if same {
			// A repair: what it replaced was a damaged copy of the same
			// version, not worth a rollback. The rollback target stays the
			// version before.
			garbage = i.undoGarbage(rec)
			rec.Undo, rec.Pruned, rec.PreviousVersion = jc.cur.Undo, jc.cur.Pruned, jc.cur.PreviousVersion
			rs := i.st.Packages[name]
			rs[len(rs)-1] = rec
			garbage = append(garbage, i.unreferenced(i.manifestGarbage(jc.cur))...)
		} else {
			i.st.Packages[name] = append(i.st.Packages[name], rec)
		}
		garbage = append(garbage, i.prune(name, keep)...)
		for _, t := range rec.Trees {
			if h := holdDir(t.Dest); !slices.Contains(i.st.HoldDirs, h) {
				i.st.HoldDirs = append(i.st.HoldDirs, h)
			}
		}
	})
	holds := make([]string, 0, len(jc.trees))
	for _, t := range jc.trees {
		holds = append(holds, holdDir(t.Dest)) // removed if nothing is kept
	}
	i.sweep(garbage, holds)
	log.Info("job finished", "phase", u.GetPhase().String(), "message", u.GetMessage())
	return u
}

// keepPrevious is how many replaced versions a package keeps for rollback:
// the largest its steps ask for (archive's keep_previous), at least 1.
func (i *Installer) keepPrevious(p *ferryv1.Package) int {
	keep := 1
	for _, s := range p.GetSteps() {
		_, k := i.kindOf(s)
		if r, ok := k.(retainer); ok {
			keep = max(keep, r.KeepPrevious(s))
		}
	}
	return keep
}

// finish commits a job's final result (and, via commit, its records) in
// one state write, then drops the journal.
func (i *Installer) finish(jc *jobCtx, u *ferryv1.JobUpdate, commit func()) *ferryv1.JobUpdate {
	i.mu.Lock()
	if commit != nil {
		commit()
	}
	i.addResult(u)
	err := i.saveState()
	i.mu.Unlock()
	if err != nil {
		// The journal stays: the next start undoes the job and reports it.
		i.log.Error("could not record a job's result", "job", jc.jobID, "err", err)
		u.Message += fmt.Sprintf(" (but recording the result failed: %v)", err)
		return u
	}
	if jc.j != nil {
		if err := jc.j.remove(); err != nil {
			i.log.Error("could not remove a job journal", "job", jc.jobID, "err", err)
		}
	}
	return u
}

// fail undoes the job's applied changes, newest first, and reports it.
func (i *Installer) fail(jc *jobCtx, failedStep string, cause error) *ferryv1.JobUpdate {
	acts := jc.actions()
	var undoErrs []error
	for _, a := range i.undoOrder(acts) {
		step := "undo: " + i.display(a.Target)
		if err := i.undoAction(a); err != nil {
			undoErrs = append(undoErrs, err)
			jc.note(step, "FAILED: "+err.Error())
			continue
		}
		jc.note(step, "restored what the job had changed")
	}
	msg := cause.Error()
	if failedStep != "" {
		msg = failedStep + ": " + msg
	}
	switch {
	case len(undoErrs) > 0:
		msg += fmt.Sprintf("; UNDO FAILED, the node may be half changed: %v", errors.Join(undoErrs...))
	case len(acts) > 0:
		msg += "; " + changesUndone(len(acts), "already applied")
	}
	u := i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, msg)
	u.FailedStep = failedStep
	var garbage []string
	for _, a := range acts {
		if a.Backup != "" {
			garbage = append(garbage, a.Backup)
		}
	}
	for k := range jc.pkg.GetSteps() {
		garbage = append(garbage, filepath.Join(i.dir, "manifests", fmt.Sprintf("%s-%d", jc.key, k)))
	}
	if len(undoErrs) > 0 {
		// Keep the journal and backups for the next start to retry the
		// undo; remember the result in memory only, so that start does.
		i.mu.Lock()
		i.results[u.GetJobId()] = proto.Clone(u).(*ferryv1.JobUpdate)
		i.mu.Unlock()
		return u
	}
	var dl *DownloadError
	if errors.As(cause, &dl) {
		// A streamed download that failed is the caller's to record, as
		// any failed download: it resumes when the job comes again after
		// the agent's own stop. The undone job leaves nothing behind.
		if jc.j != nil {
			if err := jc.j.remove(); err != nil {
				i.log.Error("could not remove a job journal", "job", jc.jobID, "err", err)
			}
		}
		removeAll(i.log, garbage)
		return u
	}
	u = i.finish(jc, u, nil)
	removeAll(i.log, garbage)
	return u
}

var pkgNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$`)

// validate refuses a malformed package before anything is touched.
func (i *Installer) validate(req Request) error {
	p := req.Package
	if p == nil {
		return errors.New("job has no package")
	}
	if !pkgNameRE.MatchString(p.GetName()) {
		return fmt.Errorf("package name %q: use letters, digits and . _ + -", p.GetName())
	}
	if p.GetVersion() == "" || strings.ContainsAny(p.GetVersion(), "\x00\n") {
		return fmt.Errorf("package %s: version %q is empty or has a newline", p.GetName(), p.GetVersion())
	}
	if len(p.GetSteps()) == 0 {
		return fmt.Errorf("package %s %s has no steps", p.GetName(), p.GetVersion())
	}
	for idx, s := range p.GetSteps() {
		if err := i.validateStep(req, s); err != nil {
			return fmt.Errorf("step %d (%s): %w", idx+1, i.describe(s), err)
		}
	}
	return nil
}

// stepIndex is a step's index in its package as a StepResult reports it.
func stepIndex(idx int) uint32 {
	return uint32(idx) //nolint:gosec // an index into a Package's steps: a protobuf message (under 2 GiB) holds fewer than 2^31
}

// runStep runs one step and appends its result.
func (i *Installer) runStep(jc *jobCtx, idx int, step *ferryv1.Step) (*ferryv1.StepResult, error) {
	res := &ferryv1.StepResult{Index: stepIndex(idx), Kind: i.kindName(step), Name: i.describe(step)}
	_, kind := i.kindOf(step)
	phase := ferryv1.JobPhase_JOB_PHASE_INSTALLING
	if isVerifier(kind) {
		phase = ferryv1.JobPhase_JOB_PHASE_CHECKING
	}
	u := i.update(jc, phase, "running "+res.Name)
	jc.progress(u)
	if jc.plan {
		jc.note(res.Name, "planning")
	} else {
		jc.note(res.Name, "started")
	}
	start := time.Now()
	var out stepResponse
	err := jc.ctx.Err()
	req := stepRequest{job: jc, index: idx, step: step}
	switch {
	case err != nil:
	case kind == nil:
		err = errors.New("unknown step kind")
	case jc.plan:
		out, err = kind.Plan(jc.ctx, req)
	default:
		out, err = kind.Apply(jc.ctx, req)
	}
	if errors.Is(err, context.Canceled) {
		err = fmt.Errorf("job cancelled: %w", err)
	}
	res.Changed, res.Detail, res.Output = out.changed, out.detail, out.output
	res.Duration = durationpb.New(time.Since(start))
	if err != nil {
		res.Error = err.Error()
	}
	if out.changed {
		jc.changed = true
	}
	jc.results = append(jc.results, res)
	switch {
	case err != nil:
		jc.note(res.Name, "FAILED: "+err.Error())
	case out.detail != "":
		jc.note(res.Name, out.detail)
	case !out.changed:
		jc.note(res.Name, "unchanged")
	}
	return res, err
}
