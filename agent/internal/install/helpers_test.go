package install

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
)

// env is one test node: an install root and a state dir.
type env struct {
	t     testing.TB
	root  string
	state string
	inst  *Installer
	jobs  int
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, root: t.TempDir(), state: t.TempDir()}
	e.inst = e.open()
	return e
}

func (e *env) open() *Installer {
	e.t.Helper()
	i, err := New(Config{Root: e.root, StateDir: e.state, MaxArchiveBytes: 64 << 20, MaxArchiveEntries: 10000})
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	return i
}

func (e *env) path(p string) string { return filepath.Join(e.root, p) }

func (e *env) nextJob() string {
	e.jobs++
	return fmt.Sprintf("job-%d", e.jobs)
}

func (e *env) install(p *ferryv1.Package, artifact string) *ferryv1.JobUpdate {
	e.t.Helper()
	return e.inst.Install(context.Background(), Request{JobID: e.nextJob(), RolloutID: "r1", Package: p, ArtifactPath: artifact}, nil, nil)
}

func (e *env) plan(p *ferryv1.Package, artifact string) *ferryv1.JobUpdate {
	e.t.Helper()
	return e.inst.Install(context.Background(), Request{JobID: e.nextJob(), Package: p, ArtifactPath: artifact, Plan: true}, nil, nil)
}

func (e *env) rollback(name string) *ferryv1.JobUpdate {
	e.t.Helper()
	return e.inst.Rollback(context.Background(), e.nextJob(), "r1", name, nil, nil)
}

func wantPhase(t testing.TB, u *ferryv1.JobUpdate, want ferryv1.JobPhase) {
	t.Helper()
	if u.GetPhase() != want {
		t.Fatalf("phase %v, want %v; message %q; failed step %q; steps %v", u.GetPhase(), want, u.GetMessage(), u.GetFailedStep(), u.GetSteps())
	}
}

// artifact builds a tar.gz from name -> content ("dir/" for directories,
// "->target" for symlinks) and returns its path and digest.
func artifact(t testing.TB, files map[string]string) (string, string) {
	t.Helper()
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	mt := time.Unix(1700000000, 0)
	for _, n := range names {
		c := files[n]
		h := &tar.Header{Name: n, Mode: 0o644, ModTime: mt, Typeflag: tar.TypeReg, Size: int64(len(c))}
		switch {
		case strings.HasSuffix(n, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case strings.HasPrefix(c, "->"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, c[2:], 0
		case strings.HasPrefix(c, "#!"):
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(c)); err != nil {
				t.Fatal(err)
			}
		}
	}
	must(t, errors.Join(tw.Close(), zw.Close()))
	sum := sha256.Sum256(buf.Bytes())
	p := filepath.Join(t.TempDir(), "artifact.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, "sha256:" + hex.EncodeToString(sum[:])
}

// installRefused installs a package of the one step (with an artifact
// when it is an archive step) and wants the job to fail with a message
// mentioning want.
func (e *env) installRefused(step *ferryv1.Step, want string) {
	e.t.Helper()
	a, d := artifact(e.t, map[string]string{"f": "x"})
	p := pkg("x", "1", "", step)
	if step.GetArchive() != nil {
		p = pkg("x", "1", d, step)
	}
	u := e.install(p, a)
	wantPhase(e.t, u, failed)
	if !strings.Contains(u.GetMessage(), want) {
		e.t.Errorf("message %q, want it to mention %q", u.GetMessage(), want)
	}
}

func pkg(name, version, digest string, steps ...*ferryv1.Step) *ferryv1.Package {
	p := &ferryv1.Package{Name: name, Version: version, Steps: steps, ContentDigest: "content-" + version}
	if digest != "" {
		p.Artifact = &ferryv1.ArtifactRef{Digest: digest, Name: name + "-" + version + ".tar.gz"}
	}
	return p
}

func archiveStep(dest string, strip uint32) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: &ferryv1.ArchiveStep{Dest: dest, StripComponents: strip}}}
}

func envStep(name string, path []string, kv ...string) *ferryv1.Step {
	s := &ferryv1.EnvStep{Name: name, Path: path}
	for k := 0; k+1 < len(kv); k += 2 {
		s.Vars = append(s.Vars, &ferryv1.EnvVar{Name: kv[k], Value: kv[k+1]})
	}
	return &ferryv1.Step{Kind: &ferryv1.Step_Env{Env: s}}
}

func sudoersStep(name string, rules ...string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Sudoers{Sudoers: &ferryv1.SudoersStep{Name: name, Rules: rules}}}
}

func fileStep(path, content string, mode uint32) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_File{File: &ferryv1.FileStep{Path: path, Content: []byte(content), Mode: mode}}}
}

func checkStep(run, expect string, timeout time.Duration) *ferryv1.Step {
	s := &ferryv1.CheckStep{Run: run, Expect: expect}
	if timeout > 0 {
		s.Timeout = durationpb.New(timeout)
	}
	return &ferryv1.Step{Kind: &ferryv1.Step_Check{Check: s}}
}

// snapshot describes everything under dir (path, type, mode, content or
// link target), to assert that a failed job left the node exactly as
// before.
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, _ := d.Info()
		b.WriteString(rel + " " + info.Mode().String())
		switch {
		case info.Mode().IsRegular():
			c, _ := os.ReadFile(p)
			b.WriteString(" " + string(c))
		case info.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			b.WriteString(" -> " + l)
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return b.String()
}

// must fails the test at once when a setup step fails.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func assertAbsent(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Lstat(p); err == nil {
		t.Fatalf("%s exists, want it absent", p)
	}
}

// assertNoLeftovers checks that no staging, temporary file or journal is
// left after a job ended.
func assertNoLeftovers(t testing.TB, e *env) {
	t.Helper()
	// The walk's errors are skipped (return nil), so WalkDir returns none.
	_ = filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		n := d.Name()
		if strings.HasPrefix(n, "stage-") || strings.HasPrefix(n, "rb-") || strings.Contains(n, ".ferry-tmp") {
			t.Errorf("leftover %s", p)
		}
		return nil
	})
	jobs, _ := os.ReadDir(filepath.Join(e.state, "install", "jobs"))
	if len(jobs) != 0 {
		t.Errorf("%d job journals left behind", len(jobs))
	}
}

func verifyTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for n, c := range files {
		p := filepath.Join(dir, n)
		switch {
		case strings.HasSuffix(n, "/"):
			if st, err := os.Stat(p); err != nil || !st.IsDir() {
				t.Errorf("%s is not a directory: %v", p, err)
			}
		case strings.HasPrefix(c, "->"):
			if l, err := os.Readlink(p); err != nil || l != c[2:] {
				t.Errorf("%s -> %q (%v), want %q", p, l, err, c[2:])
			}
		default:
			if got := readFile(t, p); got != c {
				t.Errorf("%s = %q, want %q", p, got, c)
			}
		}
	}
	if _, err := archive.Scan(dir); err != nil {
		t.Errorf("scan %s: %v", dir, err)
	}
}
