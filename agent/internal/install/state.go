package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// The state directory (StateDir/install) holds:
//
//	state.json         installed packages (a stack of records each) and recent job results
//	jobs/<key>.json    the journal of a job in progress: what it applied, to undo after a crash
//	backups/<key>-<n>/ files a job replaced, kept while a rollback may need them
//	manifests/<key>-<n> the tree an archive step installed, to check it is intact
//	tmp/               scratch space for validating files, emptied at start
//
// <key> is a hash of the job ID, so any job ID is a safe file name.

const maxResults = 200

type state struct {
	Packages map[string][]*record `json:"packages"`
	Results  []storedResult       `json:"results"`
	// HoldDirs are the directories beside archive destinations that hold
	// staging and kept trees, so a restart can clean them.
	HoldDirs []string `json:"hold_dirs,omitempty"`
}

type storedResult struct {
	JobID  string          `json:"job_id"`
	Update json.RawMessage `json:"update"`
}

// record is one installed version of a package. A package's records form a
// stack: the last is what is installed, each one's Undo restores the one
// below it.
type record struct {
	Name            string    `json:"name"`
	Version         string    `json:"version"`
	ArtifactDigest  string    `json:"artifact_digest"`
	ContentDigest   string    `json:"content_digest"`
	InstalledAt     time.Time `json:"installed_at"`
	JobID           string    `json:"job_id"`
	PreviousVersion string    `json:"previous_version"`
	// Package is the marshalled *ferryv1.Package, to re-run its checks
	// after a rollback.
	Package []byte `json:"package"`
	// Trees are the trees the version's archive steps installed.
	Trees []treeRecord `json:"trees"`
	// Undo restores what this install replaced; nil once pruned.
	Undo []*action `json:"undo"`
	// Pruned is set when Undo was dropped to keep only keep_previous
	// versions; the record cannot be rolled back past.
	Pruned bool `json:"pruned,omitempty"`
}

type treeRecord struct {
	Dest        string `json:"dest"` // host path
	Digest      string `json:"digest"`
	Strip       uint32 `json:"strip"`
	AllowSetuid bool   `json:"allow_setuid"`
	Manifest    string `json:"manifest"` // file under manifests/
}

// action is one change a job made, with what it takes to undo it. It is
// written to the job's journal before the change, so a crash at any point
// can be undone.
type action struct {
	Kind string `json:"kind"` // the Change of the step kind that made it: "tree" or "file"
	Step int    `json:"step"`
	// Target is the host path changed.
	Target string `json:"target"`
	// State: "prepared" (nothing switched yet), "switching", "applied".
	State string `json:"state"`

	// Tree: the new tree is built at Stage and switched in; the old tree
	// (if HadOld) goes to Kept. Trees are found by identity, not name,
	// so an undo after a crash mid-switch knows which is which.
	Stage    string `json:"stage,omitempty"`
	Kept     string `json:"kept,omitempty"`
	HasNew   bool   `json:"has_new,omitempty"`
	HadOld   bool   `json:"had_old,omitempty"`
	NewID    fileID `json:"new_id"`
	OldID    fileID `json:"old_id"`
	Preserve bool   `json:"preserve,omitempty"` // undo puts the new tree back at Stage instead of deleting it

	// File: the previous content is in Backup (a file under backups/) when
	// Existed; Temp is the temporary file beside Target.
	Backup  string      `json:"backup,omitempty"`
	Existed bool        `json:"existed,omitempty"`
	Mode    fs.FileMode `json:"mode,omitempty"`
	UID     int         `json:"uid,omitempty"`
	GID     int         `json:"gid,omitempty"`
	Temp    string      `json:"temp,omitempty"`

	// Service: the unit (Target) as it was before the change.
	Service *serviceChange `json:"service,omitempty"`

	// Created lists directories created for the change, outermost first.
	Created []string `json:"created,omitempty"`
}

// keptIn is the directory beside the target where a change keeps the
// previous version (an archive's hold directory); "" when it keeps none
// there.
func (a *action) keptIn() string {
	if a.Kept == "" {
		return ""
	}
	return filepath.Dir(a.Kept)
}

// journal is the on-disk record of a job in progress.
type journal struct {
	JobID     string    `json:"job_id"`
	RolloutID string    `json:"rollout_id"`
	Kind      string    `json:"kind"` // "install" or "rollback"
	Package   string    `json:"package"`
	Version   string    `json:"version"`
	Actions   []*action `json:"actions"`
	// Downloading: the job's artifact is still streaming in (nothing
	// but a staging tree was built). A job interrupted then is not over:
	// its staging trees are removed, no result is kept, and the download
	// resumes when the controller sends the job again.
	Downloading bool `json:"downloading,omitempty"`
	path        string
}

func (j *journal) save() error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if err := writeFileSync(j.path, b); err != nil {
		return fmt.Errorf("write job journal: %w", err)
	}
	return nil
}

func readJournal(p string) (*journal, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	j := &journal{}
	if err := json.Unmarshal(b, j); err != nil {
		return nil, err
	}
	if j.JobID == "" {
		return nil, errors.New("journal names no job")
	}
	j.path = p
	return j, nil
}

func (j *journal) remove() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove job journal: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(j.path))
}

func (i *Installer) loadState() error {
	i.st = &state{Packages: map[string][]*record{}}
	b, err := os.ReadFile(i.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read install state: %w", err)
	}
	if err := json.Unmarshal(b, i.st); err != nil {
		return fmt.Errorf("install state %s is corrupt: %w; move it aside to start with no installed packages", i.statePath(), err)
	}
	if i.st.Packages == nil {
		i.st.Packages = map[string][]*record{}
	}
	for _, r := range i.st.Results {
		u := &ferryv1.JobUpdate{}
		if err := protojson.Unmarshal(r.Update, u); err == nil {
			i.results[r.JobID] = u
		}
	}
	return nil
}

// saveState writes state.json atomically; callers hold i.mu.
func (i *Installer) saveState() error {
	b, err := json.MarshalIndent(i.st, "", " ")
	if err != nil {
		return err
	}
	if err := writeFileSync(i.statePath(), b); err != nil {
		return fmt.Errorf("write install state: %w", err)
	}
	return nil
}

// addResult remembers a job's final result; callers hold i.mu and save.
func (i *Installer) addResult(u *ferryv1.JobUpdate) {
	b, err := protojson.Marshal(u)
	if err != nil {
		return
	}
	i.results[u.GetJobId()] = proto.Clone(u).(*ferryv1.JobUpdate)
	i.st.Results = append(i.st.Results, storedResult{JobID: u.GetJobId(), Update: b})
	for len(i.st.Results) > maxResults {
		delete(i.results, i.st.Results[0].JobID)
		i.st.Results = i.st.Results[1:]
	}
}

func (i *Installer) statePath() string { return filepath.Join(i.dir, "state.json") }

func (i *Installer) current(name string) *record {
	rs := i.st.Packages[name]
	if len(rs) == 0 {
		return nil
	}
	return rs[len(rs)-1]
}

// undoGarbage lists what a record keeps on disk for a rollback.
func (i *Installer) undoGarbage(r *record) []string {
	var g []string
	for _, a := range r.Undo {
		if a.HadOld && !a.Preserve {
			g = append(g, a.Kept) // the previous tree
		}
		if a.Backup != "" {
			g = append(g, a.Backup) // the previous file content
		}
	}
	return g
}

func (i *Installer) manifestGarbage(r *record) []string {
	var g []string
	for _, t := range r.Trees {
		g = append(g, filepath.Join(i.dir, "manifests", t.Manifest))
	}
	return g
}

// unreferenced filters manifest paths down to those no record uses any
// more (a tree unchanged across versions shares one manifest); callers
// hold i.mu and have already updated the records.
func (i *Installer) unreferenced(paths []string) []string {
	used := map[string]bool{}
	for _, rs := range i.st.Packages {
		for _, r := range rs {
			for _, p := range i.manifestGarbage(r) {
				used[p] = true
			}
		}
	}
	var out []string
	for _, p := range paths {
		if !used[p] {
			out = append(out, p)
		}
	}
	return out
}

// prune keeps the rollback data of the newest keep records of a package
// and drops the rest; it returns the paths to delete after the commit.
func (i *Installer) prune(name string, keep int) []string {
	rs := i.st.Packages[name]
	var garbage []string
	withUndo := 0
	for j := len(rs) - 1; j >= 0; j-- {
		r := rs[j]
		if r.Pruned {
			continue
		}
		if withUndo < keep {
			withUndo++
			continue
		}
		garbage = append(garbage, i.undoGarbage(r)...)
		r.Undo, r.Pruned = nil, true
	}
	// Below the newest pruned record nothing can be reached any more.
	var manifests []string
	for j := len(rs) - 1; j >= 0; j-- {
		if rs[j].Pruned {
			for _, old := range rs[:j] {
				garbage = append(garbage, i.undoGarbage(old)...)
				manifests = append(manifests, i.manifestGarbage(old)...)
			}
			i.st.Packages[name] = rs[j:]
			break
		}
	}
	return append(garbage, i.unreferenced(manifests)...)
}
