package install

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A stepKind is one kind of install step. Each kind lives in a file of its
// own (step_archive.go, step_env.go, ...) and is registered in stepKinds
// under its field of the Step oneof; the job runner knows no kind by name.
// A job validates every step before any runs, then plans or applies them
// in order.
type stepKind interface {
	// Describe names a step in results and logs, e.g. "env go".
	Describe(s *ferryv1.Step) string
	// Validate checks what can be checked before anything is touched, so
	// a bad sudoers rule in step 3 fails the job before step 1 extracts.
	Validate(validateRequest) error
	// Plan reports what Apply would change, changing nothing.
	Plan(context.Context, stepRequest) (stepResponse, error)
	// Apply makes the node match the step, journaling each change before
	// making it so a failed or interrupted job can be undone.
	Apply(context.Context, stepRequest) (stepResponse, error)
}

// The hooks below are optional: a kind has the ones it needs, as Nomad's
// task runner hooks do.

// An undoer is a kind whose Apply journals changes (actions whose Kind is
// its Change). env and sudoers steps write through the file kind, so
// their changes are file changes.
type undoer interface {
	// Change is the name its changes are journaled under; it is on disk in
	// journals and records, so it never changes.
	Change() string
	// Undo reverts one change of a job that did not finish, from whatever
	// point it reached. It is idempotent, and takes no context: it must
	// run to the end even when the job was cancelled.
	Undo(undoRequest) error
	// Restore puts back what a finished install's change replaced (a
	// rollback), journaling the restore so it can be undone in turn.
	Restore(restoreRequest) (restoreResponse, error)
}

// An artifactUser is a kind whose steps read the package's artifact
// (archive, agent_update): the agent downloads it for them.
type artifactUser interface {
	UsesArtifact()
}

// NeedsArtifact reports whether a step of p reads its artifact, which
// the agent then downloads before the job runs.
func (i *Installer) NeedsArtifact(p *ferryv1.Package) bool {
	if p.GetArtifact().GetDigest() == "" {
		return false
	}
	for _, s := range p.GetSteps() {
		if _, k := i.kindOf(s); k != nil {
			if _, ok := k.(artifactUser); ok {
				return true
			}
		}
	}
	return false
}

// A settler is an undoer whose changes are undone (and restored, in a
// rollback) after every other change of the job, whatever their order:
// a service is restarted once the files it reads are back.
type settler interface {
	Settles()
}

// undoOrder is the order a job's changes are undone or restored in: the
// newest first, settlers last.
func (i *Installer) undoOrder(acts []*action) []*action {
	var first, last []*action
	for k := len(acts) - 1; k >= 0; k-- {
		if u, ok := i.undoer(acts[k].Kind); ok {
			if _, settles := u.(settler); settles {
				last = append(last, acts[k])
				continue
			}
		}
		first = append(first, acts[k])
	}
	return append(first, last...)
}

// A verifier is a kind whose steps change nothing and test the installed
// version (check): they run in the CHECKING phase, and a rollback runs
// them again against the version it restored.
type verifier interface {
	Verifies()
}

func isVerifier(k stepKind) bool {
	_, ok := k.(verifier)
	return ok
}

// A profiler is a kind whose steps write a login profile script that
// later checks source (env).
type profiler interface {
	// Profile returns the script's path on the node and its content with
	// absolute paths passed through mapPath.
	Profile(pkg string, s *ferryv1.Step, mapPath func(string) string) (path string, script []byte)
}

// A retainer is a kind whose steps decide how many replaced versions a
// package keeps for rollback (archive).
type retainer interface {
	KeepPrevious(s *ferryv1.Step) int
}

// validateRequest is a step checked before its job touches anything.
type validateRequest struct {
	job  Request
	step *ferryv1.Step
}

// stepRequest is a step to plan or apply.
type stepRequest struct {
	job *jobCtx
	// index is the step's place in the package; it names the step's
	// journal entries, backups and scratch files.
	index int
	step  *ferryv1.Step
}

// stepResponse is what a step did (or would do).
type stepResponse struct {
	changed bool
	detail  string
	output  string
}

// undoRequest is one journaled change to revert.
type undoRequest struct {
	change *action
}

// restoreRequest is one change of the installed version that a rollback
// reverts.
type restoreRequest struct {
	job    *jobCtx
	change *action
}

// restoreResponse says what a restore did.
type restoreResponse struct {
	detail string
	// displaced is what the restore moved aside, to delete once the
	// rollback is committed.
	displaced string
}

// stepOneof is the Step message's oneof of kinds.
var stepOneof = (&ferryv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")

// stepKinds is the registry: every kind of step this agent runs, under
// its field of the Step oneof. TestStepKindsRegistered fails when a field
// has no kind here.
func stepKinds(i *Installer) map[protoreflect.Name]stepKind {
	return map[protoreflect.Name]stepKind{
		"archive":      archiveKind{i},
		"env":          envKind{managedFile{i, wantEnvFile}},
		"sudoers":      sudoersKind{managedFile{i, wantSudoersFile}},
		"file":         fileKind{managedFile{i, wantFileStep}},
		"check":        checkKind{i},
		"service":      serviceKind{i},
		"agent_update": agentUpdateKind{i},
	}
}

// kindOf returns the name of a step's oneof field and its kind; the kind
// is nil for a step with no kind this agent knows.
func (i *Installer) kindOf(s *ferryv1.Step) (protoreflect.Name, stepKind) {
	fd := s.ProtoReflect().WhichOneof(stepOneof)
	if fd == nil {
		return "", nil
	}
	return fd.Name(), i.kinds[fd.Name()]
}

// describe names a step in results and logs.
func (i *Installer) describe(s *ferryv1.Step) string {
	if _, k := i.kindOf(s); k != nil {
		return k.Describe(s)
	}
	return "unknown step"
}

// kindName is a step's kind as results report it.
func (i *Installer) kindName(s *ferryv1.Step) string {
	if name, k := i.kindOf(s); k != nil {
		return string(name)
	}
	return "unknown"
}

// undoer returns the kind whose changes are journaled as change.
func (i *Installer) undoer(change string) (undoer, bool) {
	for _, k := range i.kinds {
		if u, ok := k.(undoer); ok && u.Change() == change {
			return u, true
		}
	}
	return nil, false
}

// validateStep checks one step with its kind.
func (i *Installer) validateStep(req Request, s *ferryv1.Step) error {
	_, k := i.kindOf(s)
	if k == nil {
		return errors.New("step has no kind (" + kindList(i.kinds) + ")")
	}
	return k.Validate(validateRequest{job: req, step: s})
}

// kindList names the registered kinds in the oneof's order, e.g.
// "archive, env or check".
func kindList(kinds map[protoreflect.Name]stepKind) string {
	var names []string
	fields := stepOneof.Fields()
	for f := 0; f < fields.Len(); f++ {
		if name := fields.Get(f).Name(); kinds[name] != nil {
			names = append(names, string(name))
		}
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// fileNameRE is a name that becomes a file name in a fixed directory
// (/etc/profile.d, /etc/sudoers.d).
var fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$`)

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
