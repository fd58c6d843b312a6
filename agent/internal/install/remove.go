package install

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A remover is a kind whose steps leave something on the node that
// removing the package deletes (archive trees, managed files).
type remover interface {
	// Removal is the change that deletes what the step put in place,
	// shaped as the record of a first install, so that the kind's Restore
	// removes it (journaled, and undone if the removal fails).
	Removal(stepRequest) (*action, error)
}

// Remove uninstalls a package: the trees its installed version's archive
// steps put in place and the files its file, env and sudoers steps wrote
// are deleted, newest step first, each journaled as a rollback change so
// that a failure or a crash puts everything back. Once done, every record
// of the package goes, with the earlier versions kept for rollback. A file
// that existed before Ferry first wrote it is deleted too: it belongs to
// the package now. A package that is not installed is UNCHANGED.
func (i *Installer) Remove(ctx context.Context, jobID, rolloutID, pkgName string, progress func(*ferryv1.JobUpdate), logf LogFunc) *ferryv1.JobUpdate {
	i.run.Lock()
	defer i.run.Unlock()
	i.Settle()
	jc, done := i.packageJob(ctx, jobID, rolloutID, pkgName, progress, logf)
	if done != nil {
		return done
	}
	i.mu.Lock()
	cur := i.current(pkgName)
	i.mu.Unlock()
	if cur == nil {
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, fmt.Sprintf("package %s is not installed on this node; nothing to remove", pkgName)), nil)
	}
	jc.pkg.Version = cur.Version
	installed := &ferryv1.Package{}
	if err := proto.Unmarshal(cur.Package, installed); err != nil {
		return i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_FAILED, fmt.Sprintf("record of %s %s is unreadable: %v", pkgName, cur.Version, err)), nil)
	}
	jc.progress(i.update(jc, ferryv1.JobPhase_JOB_PHASE_INSTALLING, "removing "+pkgName+" "+cur.Version))
	jc.note("remove", "removing "+pkgName+" "+cur.Version)
	steps := installed.GetSteps()
	var displaced []string
	for idx := len(steps) - 1; idx >= 0; idx-- {
		_, k := i.kindOf(steps[idx])
		rm, ok := k.(remover)
		if !ok {
			continue
		}
		start := time.Now()
		name := "remove " + i.describe(steps[idx])
		res := &ferryv1.StepResult{Index: stepIndex(idx), Kind: "remove", Name: name}
		// The step's file names may depend on the package (env), so it
		// is resolved as the installed version.
		a, err := rm.Removal(stepRequest{job: &jobCtx{pkg: installed}, index: idx, step: steps[idx]})
		if err == nil {
			name = "remove " + i.display(a.Target)
			res.Name = name
			var out restoreResponse
			u, _ := i.undoer(a.Kind)
			out, err = u.Restore(restoreRequest{job: jc, change: a})
			if out.displaced != "" {
				displaced = append(displaced, out.displaced)
			}
			res.Changed = err == nil
			res.Detail = "removed"
		}
		res.Duration = durationpb.New(time.Since(start))
		if err != nil {
			res.Error = err.Error()
			jc.results = append(jc.results, res)
			return i.fail(jc, name, err)
		}
		jc.results = append(jc.results, res)
		jc.note(name, "removed")
		jc.progress(i.update(jc, ferryv1.JobPhase_JOB_PHASE_INSTALLING, ""))
	}
	msg := fmt.Sprintf("removed %s %s", pkgName, cur.Version)
	var garbage []string
	var holds []string
	u := i.finish(jc, i.update(jc, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, msg), func() {
		rs := i.st.Packages[pkgName]
		delete(i.st.Packages, pkgName)
		garbage = append(garbage, displaced...)
		var manifests []string
		for _, r := range rs {
			garbage = append(garbage, i.undoGarbage(r)...)
			manifests = append(manifests, i.manifestGarbage(r)...)
			for _, a := range r.Undo {
				if d := a.keptIn(); d != "" {
					holds = append(holds, d)
				}
			}
		}
		garbage = append(garbage, i.unreferenced(manifests)...)
		for _, b := range jc.actions() {
			if b.Backup != "" {
				garbage = append(garbage, b.Backup)
			}
			if d := b.keptIn(); d != "" {
				holds = append(holds, d)
			}
		}
	})
	if u.GetPhase() == ferryv1.JobPhase_JOB_PHASE_SUCCEEDED {
		removeAll(i.log, garbage)
		for _, d := range holds {
			removeIfEmpty(d)
		}
	}
	i.log.Info("remove finished", "job", jobID, "package", pkgName, "phase", u.GetPhase().String(), "message", u.GetMessage())
	return u
}
