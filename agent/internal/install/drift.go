package install

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
)

const (
	// maxDriftExamples bounds the differences a report names per package.
	maxDriftExamples = 5
	// maxDriftPackages bounds the packages a report lists.
	maxDriftPackages = 100
	// maxDriftExample bounds one of them, in bytes (the controller refuses
	// longer report strings).
	maxDriftExample = 200
)

// clip cuts s to at most n bytes on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// ErrBusy is CheckDrift's answer while a job runs: the trees are changing
// on purpose, so a check now would report the job as drift.
var ErrBusy = errors.New("a job is running; check again when it is done")

// CheckDrift compares every installed package's trees with the manifests
// recorded when they were installed: sizes, modes, owners, times and link
// targets; with full, also the SHA-256 of every file (for trees installed
// by an agent that records hashes). It changes nothing.
func (i *Installer) CheckDrift(full bool) (*ferryv1.DriftReport, error) {
	if !i.run.TryLock() {
		return nil, ErrBusy
	}
	defer i.run.Unlock()
	i.mu.Lock()
	type tree struct {
		pkg, version string
		t            treeRecord
	}
	var trees []tree
	checked := map[string]bool{}
	for name, rs := range i.st.Packages {
		if len(rs) == 0 {
			continue
		}
		r := rs[len(rs)-1]
		checked[name] = true
		for _, t := range r.Trees {
			trees = append(trees, tree{name, r.Version, t})
		}
	}
	i.mu.Unlock()
	sort.Slice(trees, func(a, b int) bool { return trees[a].pkg < trees[b].pkg })

	rep := &ferryv1.DriftReport{CheckedAt: timestamppb.New(i.now()), Full: full, Checked: uint32(min(len(checked), 1<<31))}
	byPkg := map[string]*ferryv1.PackageDrift{}
	for _, t := range trees {
		n, examples, err := i.treeDrift(t.t, full)
		if err != nil {
			n, examples = 1, []string{err.Error()}
		}
		if n == 0 {
			continue
		}
		d := byPkg[t.pkg]
		if d == nil {
			if len(rep.Packages) >= maxDriftPackages {
				continue
			}
			d = &ferryv1.PackageDrift{Name: t.pkg, Version: t.version}
			byPkg[t.pkg] = d
			rep.Packages = append(rep.Packages, d)
		}
		d.Changed += uint32(min(n, 1<<31))
		for _, e := range examples {
			if len(d.Examples) < maxDriftExamples {
				d.Examples = append(d.Examples, clip(i.display(e), maxDriftExample))
			}
		}
	}
	return rep, nil
}

// RecordHashes adds the SHA-256 of every file to the manifests of the
// installed trees that lack them: trees installed by an agent that
// recorded no hashes (an archive step now records each file's as it
// extracts it, archive.Options.Hash). A tree that no longer
// matches its manifest is left unhashed (its drift is reported instead).
// It returns ErrBusy while a job runs.
func (i *Installer) RecordHashes() error {
	if !i.run.TryLock() {
		return ErrBusy
	}
	defer i.run.Unlock()
	i.mu.Lock()
	var trees []treeRecord
	for _, rs := range i.st.Packages {
		if len(rs) > 0 {
			trees = append(trees, rs[len(rs)-1].Trees...)
		}
	}
	i.mu.Unlock()
	var errs []error
	for _, t := range trees {
		p := filepath.Join(i.dir, "manifests", t.Manifest)
		b, err := os.ReadFile(p)
		if err != nil {
			continue // reported by CheckDrift
		}
		m, err := archive.DecodeManifest(b)
		if err != nil || m.Hashed() {
			continue
		}
		if n, _, err := m.Diff(t.Dest, false, 0); err != nil || n > 0 {
			continue
		}
		if err := m.AddHashes(t.Dest); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := writeFileSync(p, m.Encode()); err != nil {
			errs = append(errs, fmt.Errorf("record the hashes of %s: %w", i.display(t.Dest), err))
		}
	}
	return errors.Join(errs...)
}

func (i *Installer) treeDrift(t treeRecord, full bool) (int, []string, error) {
	b, err := os.ReadFile(filepath.Join(i.dir, "manifests", t.Manifest))
	if err != nil {
		return 0, nil, fmt.Errorf("%s: the manifest recorded at install time is missing: %w", i.display(t.Dest), err)
	}
	m, err := archive.DecodeManifest(b)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", i.display(t.Dest), err)
	}
	return m.Diff(t.Dest, full, maxDriftExamples)
}

// ReadOnly opens the records in stateDir without recovering or cleaning
// anything, for reading beside a running agent (ferry-agent verify,
// doctor): only Installed, Destinations and CheckDrift may be used on it.
func ReadOnly(root, stateDir string) (*Installer, error) {
	if root == "" {
		root = "/"
	}
	i := &Installer{root: filepath.Clean(root), dir: filepath.Join(stateDir, "install"), results: map[string]*ferryv1.JobUpdate{}, now: time.Now}
	if err := i.loadState(); err != nil {
		return nil, err
	}
	return i, nil
}
