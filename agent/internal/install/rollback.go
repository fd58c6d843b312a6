package install

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Rollback restores the version the package's last install replaced: the
// kept trees are switched back in (atomically, with an exchange), env,
// sudoers and other files get their previous content back, and the
// restored version's checks run. If anything fails, the rollback itself
// is undone. Rolling back a first install removes what it added.
func (i *Installer) Rollback(ctx context.Context, jobID, rolloutID, pkgName string, progress func(*ferryv1.JobUpdate), logf LogFunc) *ferryv1.JobUpdate {
	i.run.Lock()
	defer i.run.Unlock()
	i.Settle()
	jc, done := i.packageJob(ctx, jobID, rolloutID, pkgName, progress, logf)
	if done != nil {
		return done
	}
	i.mu.Lock()
	rs := i.st.Packages[pkgName]
	var cur, prev *record
	if len(rs) > 0 {
		cur = rs[len(rs)-1]
	}
	if len(rs) > 1 {
		prev = rs[len(rs)-2]
	}
	i.mu.Unlock()
	switch {
	case cur == nil:
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, fmt.Sprintf("package %s is not installed on this node; nothing to roll back", pkgName)), nil)
	case cur.Pruned:
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, fmt.Sprintf("%s %s: no earlier version is kept (raise keep_previous); install the wanted version instead", pkgName, cur.Version)), nil)
	}
	jc.pkg.Version = cur.Version
	var prevPkg *ferryv1.Package
	if prev != nil {
		prevPkg = &ferryv1.Package{}
		if err := proto.Unmarshal(prev.Package, prevPkg); err != nil {
			return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, fmt.Sprintf("record of %s %s is unreadable: %v", pkgName, prev.Version, err)), nil)
		}
	}
	jc.progress(i.update(jc, ferryv1.JobPhase_JOB_PHASE_INSTALLING, "rolling back"))
	jc.note("rollback", fmt.Sprintf("rolling back %s from %s to %s", pkgName, cur.Version, prev.versionOrNone()))
	var displaced []string
	for _, a := range i.undoOrder(cur.Undo) {
		start := time.Now()
		res := &ferryv1.StepResult{Index: stepIndex(a.Step), Kind: "rollback", Name: "restore " + i.display(a.Target), Changed: true}
		step := "rollback: " + res.Name
		jc.note(step, "started")
		var err error
		if u, ok := i.undoer(a.Kind); ok {
			var out restoreResponse
			out, err = u.Restore(restoreRequest{job: jc, change: a})
			res.Detail = out.detail
			if out.displaced != "" {
				displaced = append(displaced, out.displaced)
			}
		} else {
			err = fmt.Errorf("unknown action kind %q", a.Kind)
		}
		res.Duration = durationpb.New(time.Since(start))
		if err != nil {
			res.Error = err.Error()
			jc.results = append(jc.results, res)
			jc.note(step, "FAILED: "+err.Error())
			return i.fail(jc, res.Name, err)
		}
		jc.results = append(jc.results, res)
		jc.note(step, res.Detail)
		jc.progress(i.update(jc, ferryv1.JobPhase_JOB_PHASE_INSTALLING, ""))
	}
	if prevPkg != nil {
		// The restored version must pass its own checks.
		jc.pkg = prevPkg
		for idx, s := range prevPkg.GetSteps() {
			if _, k := i.kindOf(s); !isVerifier(k) {
				continue
			}
			res, err := i.runStep(jc, idx, s)
			if err != nil {
				jc.pkg = &ferryv1.Package{Name: pkgName, Version: cur.Version}
				return i.fail(jc, res.GetName(), err)
			}
		}
	}
	msg := fmt.Sprintf("rolled back %s from %s to %s", pkgName, cur.Version, prev.versionOrNone())
	var garbage []string
	u := i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, msg), func() {
		rs := i.st.Packages[pkgName]
		i.st.Packages[pkgName] = rs[:len(rs)-1]
		if len(rs) == 1 {
			delete(i.st.Packages, pkgName)
		}
		garbage = append(garbage, displaced...)
		garbage = append(garbage, i.undoGarbage(cur)...)
		garbage = append(garbage, i.unreferenced(i.manifestGarbage(cur))...)
		for _, b := range jc.actions() {
			garbage = append(garbage, b.Backup)
		}
	})
	removeAll(i.log, garbage)
	if u.GetPhase() == ferryv1.JobPhase_JOB_PHASE_SUCCEEDED {
		for _, a := range cur.Undo {
			if d := a.keptIn(); d != "" {
				removeIfEmpty(d)
			}
			removeCreated(a.Created)
		}
	}
	i.log.Info("rollback finished", "job", jobID, "package", pkgName, "phase", u.GetPhase().String(), "message", u.GetMessage())
	return u
}

// packageJob sets up a job on an installed package (a rollback or a
// removal), or returns the result to report at once: the job has no ID,
// or it ran already. Callers hold i.run.
func (i *Installer) packageJob(ctx context.Context, jobID, rolloutID, pkgName string, progress func(*ferryv1.JobUpdate), logf LogFunc) (*jobCtx, *ferryv1.JobUpdate) {
	if progress == nil {
		progress = func(*ferryv1.JobUpdate) {}
	}
	if logf == nil {
		logf = func(LogLine) {}
	}
	jc := &jobCtx{
		ctx: ctx, jobID: jobID, rolloutID: rolloutID, key: jobKey(jobID),
		pkg: &ferryv1.Package{Name: pkgName}, progress: progress, logf: logf,
	}
	if jobID == "" {
		return nil, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, "job has no ID")
	}
	if u, ok := i.JobResult(jobID); ok {
		return nil, u
	}
	return jc, nil
}

func (r *record) versionOrNone() string {
	if r == nil {
		return "nothing (first install removed)"
	}
	return r.Version
}

func (i *Installer) display(host string) string {
	if i.root == "/" {
		return host
	}
	if rel, err := filepath.Rel(i.root, host); err == nil {
		return "/" + rel
	}
	return host
}
