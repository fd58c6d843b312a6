package install

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
)

const (
	succeeded = ferryv1.JobPhase_JOB_PHASE_SUCCEEDED
	unchanged = ferryv1.JobPhase_JOB_PHASE_UNCHANGED
	failed    = ferryv1.JobPhase_JOB_PHASE_FAILED
)

var (
	goV1 = map[string]string{
		"go/":           "",
		"go/VERSION":    "go1.20.2",
		"go/bin/":       "",
		"go/bin/go":     "#!/bin/sh\necho go version go1.20.2 linux/amd64\n",
		"go/bin/gofmt":  "->go",
		"go/src/old.go": "package old",
	}
	goV2 = map[string]string{
		"go/":           "",
		"go/VERSION":    "go1.20.3",
		"go/bin/":       "",
		"go/bin/go":     "#!/bin/sh\necho go version go1.20.3 linux/amd64\n",
		"go/bin/gofmt":  "->go",
		"go/src/new.go": "package new",
	}
)

func stripGo(files map[string]string) map[string]string {
	out := map[string]string{}
	for n, c := range files {
		if r := strings.TrimPrefix(n, "go/"); r != "" {
			out[r] = c
		}
	}
	return out
}

func goPackage(version, digest string, extra ...*ferryv1.Step) *ferryv1.Package {
	steps := []*ferryv1.Step{
		archiveStep("/usr/local/go", 1),
		envStep("go", []string{"/usr/local/go/bin"}, "GOROOT", "/usr/local/go"),
		sudoersStep("deploy", "deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"),
		checkStep("go version", "go"+version, 0),
	}
	return pkg("go", version, digest, append(steps, extra...)...)
}

// TestGoLifecycle walks the README's Go toolchain package through a
// node's life: install, re-install, plan, upgrade, failed upgrade,
// rollback, and rollback of the first install.
func TestGoLifecycle(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	a2, d2 := artifact(t, goV2)
	dest := e.path("/usr/local/go")
	envFile := e.path("/etc/profile.d/go.sh")
	sudoFile := e.path("/etc/sudoers.d/deploy")

	t.Run("fresh install", func(t *testing.T) {
		u := e.install(goPackage("1.20.2", d1), a1)
		wantPhase(t, u, succeeded)
		verifyTree(t, dest, stripGo(goV1))
		for _, s := range u.GetSteps()[:3] {
			if !s.GetChanged() {
				t.Errorf("step %s reported unchanged on a fresh install", s.GetName())
			}
		}
		if got := u.GetSteps()[3].GetOutput(); !strings.Contains(got, "go1.20.2") {
			t.Errorf("check output %q", got)
		}
		if c := readFile(t, envFile); !strings.Contains(c, "export GOROOT='/usr/local/go'") {
			t.Errorf("env file:\n%s", c)
		}
		st, err := os.Stat(sudoFile)
		if err != nil || st.Mode().Perm() != 0o440 {
			t.Errorf("sudoers file mode %v, %v", st.Mode(), err)
		}
		if os.Geteuid() == 0 {
			assertOwner(t, sudoFile, 0, 0)
		}
		assertNoLeftovers(t, e)
		inst := e.inst.Installed()
		if len(inst) != 1 || inst[0].GetVersion() != "1.20.2" || inst[0].GetArtifactDigest() != d1 || inst[0].GetPreviousVersion() != "" {
			t.Errorf("Installed() = %v", inst)
		}
	})

	t.Run("re-run is unchanged", func(t *testing.T) {
		u := e.install(goPackage("1.20.2", d1), a1)
		wantPhase(t, u, unchanged)
		for _, s := range u.GetSteps() {
			if s.GetChanged() {
				t.Errorf("step %s changed on a re-run: %s", s.GetName(), s.GetDetail())
			}
		}
	})

	t.Run("tampered tree is repaired", func(t *testing.T) {
		must(t, os.WriteFile(filepath.Join(dest, "VERSION"), []byte("tampered"), 0o644))
		u := e.install(goPackage("1.20.2", d1), a1)
		wantPhase(t, u, succeeded)
		if !u.GetSteps()[0].GetChanged() || u.GetSteps()[1].GetChanged() {
			t.Errorf("only the archive step should change: %v", u.GetSteps())
		}
		verifyTree(t, dest, stripGo(goV1))
	})

	t.Run("plan changes nothing", func(t *testing.T) {
		before := snapshot(t, e.root)
		u := e.plan(goPackage("1.20.3", d2), a2)
		wantPhase(t, u, succeeded)
		if !strings.Contains(u.GetSteps()[0].GetDetail(), "would replace") || !u.GetSteps()[0].GetChanged() {
			t.Errorf("archive plan: %v", u.GetSteps()[0])
		}
		if u.GetSteps()[1].GetChanged() || u.GetSteps()[2].GetChanged() {
			t.Errorf("env and sudoers are the same in both versions: %v", u.GetSteps())
		}
		if after := snapshot(t, e.root); after != before {
			t.Errorf("plan changed the node:\n%s\nvs\n%s", before, after)
		}
	})

	t.Run("failed upgrade is undone", func(t *testing.T) {
		before := snapshot(t, e.root)
		p := goPackage("1.20.3", d2,
			envStep("extra", nil, "A", "b"),
			checkStep("echo boom; exit 3", "", 0))
		u := e.install(p, a2)
		wantPhase(t, u, failed)
		if u.GetFailedStep() != "check: echo boom; exit 3" || !strings.Contains(u.GetMessage(), "status 3") || !strings.Contains(u.GetMessage(), "undone") {
			t.Errorf("failed_step %q message %q", u.GetFailedStep(), u.GetMessage())
		}
		if out := u.GetSteps()[len(u.GetSteps())-1].GetOutput(); !strings.Contains(out, "boom") {
			t.Errorf("failed check output %q", out)
		}
		if after := snapshot(t, e.root); after != before {
			t.Errorf("failed job left the node changed:\nbefore\n%s\nafter\n%s", before, after)
		}
		assertNoLeftovers(t, e)
		if v := e.inst.Installed()[0].GetVersion(); v != "1.20.2" {
			t.Errorf("installed version %s after a failed upgrade", v)
		}
	})

	t.Run("upgrade", func(t *testing.T) {
		u := e.install(goPackage("1.20.3", d2), a2)
		wantPhase(t, u, succeeded)
		verifyTree(t, dest, stripGo(goV2))
		assertAbsent(t, filepath.Join(dest, "src/old.go"))
		if u.GetSteps()[1].GetChanged() || u.GetSteps()[2].GetChanged() {
			t.Errorf("env and sudoers did not change: %v", u.GetSteps())
		}
		inst := e.inst.Installed()
		if inst[0].GetVersion() != "1.20.3" || inst[0].GetPreviousVersion() != "1.20.2" {
			t.Errorf("Installed() = %v", inst)
		}
		assertNoLeftovers(t, e)
	})

	t.Run("rollback", func(t *testing.T) {
		u := e.rollback("go")
		wantPhase(t, u, succeeded)
		verifyTree(t, dest, stripGo(goV1))
		if inst := e.inst.Installed(); inst[0].GetVersion() != "1.20.2" {
			t.Errorf("Installed() = %v", inst)
		}
		// The restored version is intact: installing it again is a no-op.
		wantPhase(t, e.install(goPackage("1.20.2", d1), a1), unchanged)
		assertNoLeftovers(t, e)
	})

	t.Run("only keep_previous versions back", func(t *testing.T) {
		u := e.rollback("go")
		wantPhase(t, u, failed)
		if !strings.Contains(u.GetMessage(), "keep_previous") {
			t.Errorf("message %q", u.GetMessage())
		}
		verifyTree(t, dest, stripGo(goV1))
	})
}

func TestRollbackOfFirstInstallRemovesIt(t *testing.T) {
	e := newEnv(t)
	must(t, os.MkdirAll(e.path("/etc"), 0o755))
	before := snapshot(t, e.root)
	a1, d1 := artifact(t, goV1)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	wantPhase(t, e.rollback("go"), succeeded)
	if got := snapshot(t, e.root); got != before {
		t.Errorf("rollback of the first install left:\n%s", got)
	}
	if inst := e.inst.Installed(); len(inst) != 0 {
		t.Errorf("Installed() = %v", inst)
	}
	u := e.rollback("go")
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "not installed") {
		t.Errorf("message %q", u.GetMessage())
	}
}

func TestRollbackRestoresUnmanagedTree(t *testing.T) {
	e := newEnv(t)
	must(t, os.MkdirAll(e.path("/usr/local/go/bin"), 0o755))
	must(t, os.WriteFile(e.path("/usr/local/go/bin/go"), []byte("hand-installed"), 0o755))
	before := snapshot(t, e.root)
	a1, d1 := artifact(t, goV1)
	u := e.install(goPackage("1.20.2", d1), a1)
	wantPhase(t, u, succeeded)
	if d := u.GetSteps()[0].GetDetail(); !strings.Contains(d, "not installed by Ferry") {
		t.Errorf("detail %q", d)
	}
	wantPhase(t, e.rollback("go"), succeeded)
	if got := snapshot(t, e.root); got != before {
		t.Errorf("rollback did not restore the hand-installed tree:\n%s\nvs\n%s", before, got)
	}
}

func TestRepairKeepsRollbackTarget(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	a2, d2 := artifact(t, goV2)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	wantPhase(t, e.install(goPackage("1.20.3", d2), a2), succeeded)
	must(t, os.Remove(e.path("/usr/local/go/VERSION")))
	wantPhase(t, e.install(goPackage("1.20.3", d2), a2), succeeded)
	verifyTree(t, e.path("/usr/local/go"), stripGo(goV2))
	if p := e.inst.Installed()[0].GetPreviousVersion(); p != "1.20.2" {
		t.Errorf("previous version %q after a repair", p)
	}
	wantPhase(t, e.rollback("go"), succeeded)
	verifyTree(t, e.path("/usr/local/go"), stripGo(goV1))
	if kept, _ := os.ReadDir(e.path("/usr/local/.ferry-go")); len(kept) > 1 {
		t.Errorf("%d trees kept", len(kept))
	}
}

func assertOwner(t testing.TB, p string, uid, gid int) {
	t.Helper()
	m, err := archive.Scan(p)
	if err != nil {
		t.Fatal(err)
	}
	if int(m[0].UID) != uid || int(m[0].GID) != gid {
		t.Errorf("%s owned by %d:%d, want %d:%d", p, m[0].UID, m[0].GID, uid, gid)
	}
}

// stepCase describes one step kind for the generic lifecycle test.
type stepCase struct {
	name   string
	v1, v2 *ferryv1.Step
	target string // path under the root the step manages
	want1  string // content after v1
	want2  string
}

func TestStepLifecycle(t *testing.T) {
	cases := []stepCase{
		{
			name:   "env",
			v1:     envStep("app", []string{"/opt/app/bin"}, "APP_HOME", "/opt/app"),
			v2:     envStep("app", []string{"/opt/app/bin", "/opt/app/sbin"}, "APP_HOME", "/opt/app2"),
			target: "/etc/profile.d/app.sh",
			want1:  "export APP_HOME='/opt/app'",
			want2:  "export APP_HOME='/opt/app2'",
		},
		{
			name:   "sudoers",
			v1:     sudoersStep("app", "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart app"),
			v2:     sudoersStep("app", "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart app, /usr/bin/systemctl status app"),
			target: "/etc/sudoers.d/app",
			want1:  "restart app\n",
			want2:  "status app",
		},
		{
			name:   "file",
			v1:     fileStep("/etc/app/app.conf", "port = 1\n", 0o600),
			v2:     fileStep("/etc/app/app.conf", "port = 2\n", 0o640),
			target: "/etc/app/app.conf",
			want1:  "port = 1",
			want2:  "port = 2",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			target := e.path(tc.target)
			empty := snapshot(t, e.root)

			wantPhase(t, e.plan(pkg("app", "1", "", tc.v1), ""), succeeded)
			if snapshot(t, e.root) != empty {
				t.Fatal("plan of a fresh install changed the node")
			}

			u := e.install(pkg("app", "1", "", tc.v1), "")
			wantPhase(t, u, succeeded)
			if !u.GetSteps()[0].GetChanged() {
				t.Error("fresh install reported unchanged")
			}
			if c := readFile(t, target); !strings.Contains(c, tc.want1) {
				t.Fatalf("after v1 %s:\n%s", tc.target, c)
			}
			s1 := snapshot(t, e.root)

			u = e.install(pkg("app", "1", "", tc.v1), "")
			wantPhase(t, u, unchanged)
			if u.GetSteps()[0].GetChanged() {
				t.Error("re-run reported changed")
			}

			// Rolling back a first install removes what it added.
			wantPhase(t, e.rollback("app"), succeeded)
			if got := snapshot(t, e.root); got != empty {
				t.Fatalf("rolling back the first install left:\n%s", got)
			}
			wantPhase(t, e.install(pkg("app", "1", "", tc.v1), ""), succeeded)
			if snapshot(t, e.root) != s1 {
				t.Fatal("reinstall differs from the first install")
			}

			u = e.plan(pkg("app", "2", "", tc.v2), "")
			wantPhase(t, u, succeeded)
			if !strings.HasPrefix(u.GetSteps()[0].GetDetail(), "would update") {
				t.Errorf("plan detail %q", u.GetSteps()[0].GetDetail())
			}
			if snapshot(t, e.root) != s1 {
				t.Fatal("plan changed the node")
			}

			// A failure after the step undoes it.
			u = e.install(pkg("app", "2", "", tc.v2, checkStep("false", "", 0)), "")
			wantPhase(t, u, failed)
			if snapshot(t, e.root) != s1 {
				t.Fatalf("failed job not undone:\n%s\nvs\n%s", s1, snapshot(t, e.root))
			}
			assertNoLeftovers(t, e)

			u = e.install(pkg("app", "2", "", tc.v2), "")
			wantPhase(t, u, succeeded)
			if c := readFile(t, target); !strings.Contains(c, tc.want2) {
				t.Fatalf("after v2 %s:\n%s", tc.target, c)
			}

			wantPhase(t, e.rollback("app"), succeeded)
			if got := snapshot(t, e.root); got != s1 {
				t.Fatalf("rollback did not restore v1:\n%s\nvs\n%s", s1, got)
			}
			wantPhase(t, e.rollback("app"), failed) // keep_previous is 1
			assertNoLeftovers(t, e)
		})
	}
}

func TestFileStepKeepsAndSetsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing owners needs root (CI runs as root)")
	}
	e := newEnv(t)
	target := e.path("/etc/app.conf")
	must(t, os.MkdirAll(filepath.Dir(target), 0o755))
	must(t, os.WriteFile(target, []byte("old"), 0o644))
	must(t, os.Chown(target, 1234, 1234))
	wantPhase(t, e.install(pkg("app", "1", "", fileStep("/etc/app.conf", "new", 0o644)), ""), succeeded)
	assertOwner(t, target, 1234, 1234) // no owner given: kept
	step := fileStep("/etc/app.conf", "new", 0o644)
	step.GetFile().Owner, step.GetFile().Group = "root", "root"
	u := e.install(pkg("app", "2", "", step), "")
	wantPhase(t, u, succeeded)
	if !strings.Contains(u.GetSteps()[0].GetDetail(), "owner") {
		t.Errorf("detail %q does not mention the owner", u.GetSteps()[0].GetDetail())
	}
	assertOwner(t, target, 0, 0)
	wantPhase(t, e.rollback("app"), succeeded)
	assertOwner(t, target, 1234, 1234)
}

func TestEnvValuesNeverExecute(t *testing.T) {
	values := map[string]string{
		"NEWLINE":   "line1\nline2\n",
		"SQUOTE":    "it's 'quoted'",
		"DQUOTE":    `say "hi" \" done`,
		"SUBST":     "$(touch MARKER)",
		"BACKTICK":  "`touch MARKER`",
		"DOLLAR":    "$HOME ${PATH} $0 $$",
		"BACKSLASH": `a\b\\c\`,
		"SEMICOLON": "x; touch MARKER; #",
		"MIXED":     "'\"$(`touch MARKER`)\"'\n'",
		"EMPTY":     "",
		"UNICODE":   "héllo wörld ✓",
		"GLOB":      "* ? [a]",
	}
	e := newEnv(t)
	var kv []string
	for k, v := range values {
		kv = append(kv, k, v)
	}
	wantPhase(t, e.install(pkg("hostile", "1", "", envStep("hostile", []string{"/opt/it's $(x)/bin"}, kv...)), ""), succeeded)
	work := t.TempDir()
	for k, v := range values {
		cmd := exec.Command("sh", "-c", `. "$1" && printf '%s' "$`+k+`"`, "sh", e.path("/etc/profile.d/hostile.sh"))
		cmd.Dir = work
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sourcing the env file: %v: %s", err, out)
		}
		if string(out) != v {
			t.Errorf("%s round-tripped as %q, want %q", k, out, v)
		}
	}
	out, _ := exec.Command("sh", "-c", `. "$1" && printf '%s' "$PATH"`, "sh", e.path("/etc/profile.d/hostile.sh")).Output()
	if !strings.HasPrefix(string(out), "/opt/it's $(x)/bin:") {
		t.Errorf("PATH = %q", out)
	}
	if _, err := os.Stat(filepath.Join(work, "MARKER")); err == nil {
		t.Fatal("sourcing the env file executed a value")
	}
}

func TestEnvRefusals(t *testing.T) {
	tests := []struct {
		name string
		step *ferryv1.Step
		want string
	}{
		{"bad file name", envStep("../x", nil, "A", "b"), "env name"},
		{"dot in name", envStep("a.b", nil, "A", "b"), "env name"},
		{"bad var name", envStep("x", nil, "1A", "b"), "shell identifier"},
		{"var with space", envStep("x", nil, "A B", "b"), "shell identifier"},
		{"PATH as var", envStep("x", nil, "PATH", "/bin"), "path list"},
		{"IFS", envStep("x", nil, "IFS", ""), "refusing"},
		{"duplicate var", envStep("x", nil, "A", "1", "A", "2"), "twice"},
		{"NUL in value", envStep("x", nil, "A", "a\x00b"), "NUL"},
		{"relative PATH entry", envStep("x", []string{"bin"}, "A", "b"), "absolute"},
		{"colon in PATH entry", envStep("x", []string{"/a:/b"}, "A", "b"), "':'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			u := e.install(pkg("x", "1", "", tc.step), "")
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), tc.want) {
				t.Errorf("message %q, want it to mention %q", u.GetMessage(), tc.want)
			}
			assertAbsent(t, e.path("/etc/profile.d"))
		})
	}
}

func TestSudoersRefusals(t *testing.T) {
	tests := []struct {
		name string
		step *ferryv1.Step
		want string
	}{
		{"dot in name", sudoersStep("deploy.conf", "deploy ALL=ALL"), "'.'"},
		{"tilde", sudoersStep("deploy~", "deploy ALL=ALL"), "'~'"},
		{"slash", sudoersStep("../sudoers", "deploy ALL=ALL"), "sudoers name"},
		{"syntax error", sudoersStep("deploy", "deploy ALL /bin/ls"), "'='"},
		{"include", sudoersStep("deploy", "#includedir /tmp"), "include"},
		{"relative command", sudoersStep("deploy", "deploy ALL=(root) NOPASSWD: ls"), "full path"},
		{"smuggled newline", sudoersStep("deploy", "deploy ALL=/bin/ls\n@include /tmp/x"), "include"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			target := e.path("/etc/sudoers.d/deploy")
			must(t, os.MkdirAll(filepath.Dir(target), 0o750))
			must(t, os.WriteFile(target, []byte("# previous\ndeploy ALL=/bin/true\n"), 0o440))
			before := snapshot(t, e.root)
			// The bad step comes after a good one: nothing may be applied.
			u := e.install(pkg("x", "1", "", fileStep("/etc/first", "x", 0), tc.step), "")
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), tc.want) {
				t.Errorf("message %q, want it to mention %q", u.GetMessage(), tc.want)
			}
			if snapshot(t, e.root) != before {
				t.Errorf("a refused sudoers step changed the node")
			}
		})
	}
}

func TestVisudoValidation(t *testing.T) {
	visudo, err := exec.LookPath("visudo")
	if err != nil {
		t.Skip("visudo not installed (apt-get install sudo); Ferry's own checker is tested without it")
	}
	e := newEnv(t)
	e.inst.visudo = visudo
	wantPhase(t, e.install(pkg("x", "1", "", sudoersStep("deploy", "deploy ALL=(root) NOPASSWD: /usr/bin/id")), ""), succeeded)
	if out, err := exec.Command(visudo, "-cf", e.path("/etc/sudoers.d/deploy")).CombinedOutput(); err != nil {
		t.Errorf("visudo refuses the installed file: %v: %s", err, out)
	}
	// A fragment with an unknown Defaults name is refused, naming the
	// setting (Ferry's checker knows sudo's Defaults list; visudo agrees).
	u := e.install(pkg("x", "2", "", sudoersStep("deploy", "Defaults no_such_setting_ferry")), "")
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "visudo") || !strings.Contains(u.GetMessage(), "no_such_setting_ferry") {
		t.Errorf("message %q does not name visudo and the setting", u.GetMessage())
	}
	if c := readFile(t, e.path("/etc/sudoers.d/deploy")); !strings.Contains(c, "/usr/bin/id") {
		t.Errorf("a refused fragment replaced the old one:\n%s", c)
	}
}

func TestPathsLeavingTheRoot(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name  string
		setup func(e *env)
		step  *ferryv1.Step
		want  string
	}{
		{"relative file path", nil, fileStep("etc/x", "x", 0), "absolute"},
		{"dot dot file path", nil, fileStep("/etc/../../x", "x", 0), `".."`},
		{"dot dot archive dest", nil, archiveStep("/opt/../../x", 0), `".."`},
		{"root itself", nil, archiveStep("/", 0), "install root itself"},
		{"symlinked parent", func(e *env) { must(e.t, os.Symlink(outside, e.path("etc"))) }, fileStep("/etc/x", "x", 0), "leaves the install root"},
		{"symlinked grandparent", func(e *env) { must(e.t, os.Symlink(outside, e.path("opt"))) }, archiveStep("/opt/app/current", 0), "leaves the install root"},
		{"symlinked profile.d", func(e *env) {
			must(e.t, os.MkdirAll(e.path("etc"), 0o755))
			must(e.t, os.Symlink(outside, e.path("etc/profile.d")))
		}, envStep("x", nil, "A", "b"), "leaves the install root"},
		{"target is a symlink", func(e *env) {
			must(e.t, os.MkdirAll(e.path("etc"), 0o755))
			must(e.t, os.Symlink(filepath.Join(outside, "f"), e.path("etc/f")))
		}, fileStep("/etc/f", "x", 0), "not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.setup != nil {
				tc.setup(e)
			}
			e.installRefused(tc.step, tc.want)
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("wrote outside the root: %v", ents)
			}
		})
	}
}

func TestHostileArchiveLeavesNodeUntouched(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	before := snapshot(t, e.root)
	for name, files := range map[string]map[string]string{
		"escaping symlink": {"go/": "", "go/bin/": "", "go/bin/go": "#!/bin/sh\n", "go/lib": "->../../../etc"},
		"dot dot":          {"go/": "", "go/../../evil": "x"},
	} {
		t.Run(name, func(t *testing.T) {
			a, d := artifact(t, files)
			u := e.install(goPackage("6.6.6", d), a)
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), "unsafe archive") {
				t.Errorf("message %q", u.GetMessage())
			}
			if snapshot(t, e.root) != before {
				t.Error("a refused archive changed the node")
			}
			assertNoLeftovers(t, e)
		})
	}
}

func TestChecks(t *testing.T) {
	tests := []struct {
		name    string
		check   *ferryv1.Step
		want    ferryv1.JobPhase
		message string
	}{
		{"passes", checkStep("echo hello", "hello", 0), unchanged, ""},
		{"expect missing", checkStep("echo hello", "bye", 0), failed, `does not contain "bye"`},
		{"non-zero exit", checkStep("echo oops >&2; exit 7", "", 0), failed, "status 7: oops"},
		{"timeout kills the group", checkStep("sleep 30 & sleep 30; echo done", "", 300*time.Millisecond), failed, "timed out"},
		{"sees the env under the root", checkStep(`test "$APP" = "$FERRY_ROOT/opt/app" && echo ok`, "ok", 0), unchanged, ""},
		{"sees PATH under the root", checkStep("apptool", "tool ran", 0), unchanged, ""},
		{"runs in the root", checkStep("cat opt/app/bin/apptool", "tool ran", 0), unchanged, ""},
		{"clean environment", checkStep(`test -z "$FERRY_TEST_LEAK" && echo clean`, "clean", 0), unchanged, ""},
	}
	t.Setenv("FERRY_TEST_LEAK", "leaked")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			must(t, os.MkdirAll(e.path("/opt/app/bin"), 0o755))
			must(t, os.WriteFile(e.path("/opt/app/bin/apptool"), []byte("#!/bin/sh\necho tool ran\n"), 0o755))
			env := envStep("app", []string{"/opt/app/bin"}, "APP", "/opt/app")
			wantPhase(t, e.install(pkg("app", "1", "", env), ""), succeeded)
			p := pkg("app", "1", "", env, tc.check)
			start := time.Now()
			u := e.install(p, "")
			wantPhase(t, u, tc.want)
			if !strings.Contains(u.GetMessage(), tc.message) {
				t.Errorf("message %q, want it to mention %q", u.GetMessage(), tc.message)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("check took %v", d)
			}
		})
	}
	t.Run("env file keeps the real paths", func(t *testing.T) {
		e := newEnv(t)
		wantPhase(t, e.install(pkg("app", "1", "", envStep("app", []string{"/opt/app/bin"}, "APP", "/opt/app")), ""), succeeded)
		c := readFile(t, e.path("/etc/profile.d/app.sh"))
		if strings.Contains(c, e.root) || !strings.Contains(c, "export APP='/opt/app'") {
			t.Errorf("env file:\n%s", c)
		}
	})
}

func TestJobsRunOnce(t *testing.T) {
	e := newEnv(t)
	p := pkg("app", "1", "", fileStep("/etc/app", "1", 0))
	req := Request{JobID: "once", Package: p}
	u1 := e.inst.Install(context.Background(), req, nil, nil)
	wantPhase(t, u1, succeeded)
	must(t, os.Remove(e.path("/etc/app")))
	u2 := e.inst.Install(context.Background(), req, nil, nil)
	wantPhase(t, u2, succeeded)
	assertAbsent(t, e.path("/etc/app")) // not run again
	// Results survive a restart.
	i2 := e.open()
	u3, ok := i2.JobResult("once")
	if !ok || u3.GetPhase() != succeeded {
		t.Fatalf("JobResult after restart = %v, %v", u3, ok)
	}
	if len(i2.RecentResults()) != 1 {
		t.Errorf("RecentResults() = %v", i2.RecentResults())
	}
}

func TestProgressAndLogs(t *testing.T) {
	e := newEnv(t)
	var phases []ferryv1.JobPhase
	var lines []LogLine
	logf := func(l LogLine) { lines = append(lines, l) }
	p := pkg("app", "1", "", fileStep("/etc/app", "1", 0), checkStep("echo one; echo two >&2", "one", 0))
	u := e.inst.Install(context.Background(), Request{JobID: "p", Package: p},
		func(u *ferryv1.JobUpdate) { phases = append(phases, u.GetPhase()) }, logf)
	wantPhase(t, u, succeeded)
	check := u.GetSteps()[1].GetName()
	wantLine := func(l LogLine) {
		t.Helper()
		if !slices.Contains(lines, l) {
			t.Errorf("logs lack %+v:\n%s", l, showLines(lines))
		}
	}
	ferry, stdout, stderr := ferryv1.LogStream_LOG_STREAM_FERRY, ferryv1.LogStream_LOG_STREAM_STDOUT, ferryv1.LogStream_LOG_STREAM_STDERR
	wantLine(LogLine{Step: check, Stream: ferry, Text: "started"})
	wantLine(LogLine{Step: check, Stream: stdout, Text: "one"})
	wantLine(LogLine{Step: check, Stream: stderr, Text: "two"})
	wantLine(LogLine{Step: check, Stream: ferry, Text: `passed (output contains "one")`})
	var sawChecking bool
	for _, ph := range phases {
		sawChecking = sawChecking || ph == ferryv1.JobPhase_JOB_PHASE_CHECKING
	}
	if len(phases) == 0 || phases[0] != ferryv1.JobPhase_JOB_PHASE_INSTALLING || !sawChecking {
		t.Errorf("phases %v", phases)
	}
	if u.GetSteps()[0].GetDuration() == nil || u.GetAt() == nil {
		t.Errorf("missing duration or time: %v", u)
	}

	// A failed job logs the failure and each undo; a rollback each restore.
	lines = nil
	u = e.inst.Install(context.Background(), Request{JobID: "p2", Package: pkg("app", "2", "", fileStep("/etc/app", "2", 0), checkStep("exit 3", "", 0))}, nil, logf)
	wantPhase(t, u, failed)
	wantLine(LogLine{Step: u.GetSteps()[1].GetName(), Stream: ferry, Text: "FAILED: " + u.GetSteps()[1].GetError()})
	wantLine(LogLine{Step: "undo: /etc/app", Stream: ferry, Text: "restored what the job had changed"})
	lines = nil
	u = e.inst.Rollback(context.Background(), "rb", "r", "app", nil, logf)
	wantPhase(t, u, succeeded)
	wantLine(LogLine{Step: "rollback", Stream: ferry, Text: "rolling back app from 1 to nothing (first install removed)"})
	wantLine(LogLine{Step: "rollback: restore /etc/app", Stream: ferry, Text: "started"})
}

func showLines(ls []LogLine) string {
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "  [%s] %s %q\n", l.Step, l.Stream, l.Text)
	}
	return b.String()
}

func TestKeepPrevious(t *testing.T) {
	tests := []struct {
		keep      uint32
		rollbacks int // how many rollbacks succeed from v3
	}{
		{keep: 0, rollbacks: 1},
		{keep: 1, rollbacks: 1},
		{keep: 2, rollbacks: 2},
	}
	for _, tc := range tests {
		t.Run("keep "+string(rune('0'+tc.keep)), func(t *testing.T) {
			e := newEnv(t)
			for v := 1; v <= 3; v++ {
				a, d := artifact(t, map[string]string{"VERSION": string(rune('0' + v))})
				step := archiveStep("/opt/app", 0)
				step.GetArchive().KeepPrevious = tc.keep
				wantPhase(t, e.install(pkg("app", string(rune('0'+v)), d, step), a), succeeded)
			}
			kept, _ := os.ReadDir(e.path("/opt/.ferry-app"))
			if want := max(int(tc.keep), 1); len(kept) != want {
				t.Errorf("%d trees kept, want %d", len(kept), want)
			}
			for r := 0; r < tc.rollbacks; r++ {
				wantPhase(t, e.rollback("app"), succeeded)
				if got := readFile(t, e.path("/opt/app/VERSION")); got != string(rune('0'+3-r-1)) {
					t.Errorf("after rollback %d VERSION = %s", r+1, got)
				}
			}
			u := e.rollback("app")
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), "keep_previous") {
				t.Errorf("message %q", u.GetMessage())
			}
		})
	}
}

func TestRollbackRunsChecksAndUndoesOnFailure(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, map[string]string{"VERSION": "1"})
	a2, d2 := artifact(t, map[string]string{"VERSION": "2"})
	// Version 1's check only passes while the marker file exists.
	marker := filepath.Join(t.TempDir(), "ok")
	must(t, os.WriteFile(marker, nil, 0o644))
	wantPhase(t, e.install(pkg("app", "1", d1, archiveStep("/opt/app", 0), checkStep("test -e "+marker, "", 0)), a1), succeeded)
	wantPhase(t, e.install(pkg("app", "2", d2, archiveStep("/opt/app", 0)), a2), succeeded)
	before := snapshot(t, e.root)
	must(t, os.Remove(marker))
	u := e.rollback("app")
	wantPhase(t, u, failed)
	if snapshot(t, e.root) != before {
		t.Error("a failed rollback was not undone")
	}
	assertNoLeftovers(t, e)
	must(t, os.WriteFile(marker, nil, 0o644))
	wantPhase(t, e.rollback("app"), succeeded)
	if got := readFile(t, e.path("/opt/app/VERSION")); got != "1" {
		t.Errorf("VERSION %s after rollback", got)
	}
}

func TestCancelledJobIsUndone(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	p := pkg("app", "1", "", fileStep("/etc/app", "1", 0), checkStep("sleep 20", "", 0))
	done := make(chan *ferryv1.JobUpdate)
	go func() {
		done <- e.inst.Install(ctx, Request{JobID: "c", Package: p}, func(u *ferryv1.JobUpdate) {
			if u.GetPhase() == ferryv1.JobPhase_JOB_PHASE_CHECKING {
				cancel()
			}
		}, nil)
	}()
	select {
	case u := <-done:
		wantPhase(t, u, failed)
		if !strings.Contains(u.GetMessage(), "cancel") {
			t.Errorf("message %q", u.GetMessage())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("cancelled job did not stop")
	}
	assertAbsent(t, e.path("/etc/app"))
}

func TestRequestValidation(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"no package", Request{JobID: "a"}, "no package"},
		{"bad name", Request{JobID: "b", Package: pkg("../x", "1", "", fileStep("/x", "", 0))}, "package name"},
		{"no version", Request{JobID: "c", Package: pkg("x", "", "", fileStep("/x", "", 0))}, "version"},
		{"no steps", Request{JobID: "d", Package: pkg("x", "1", "")}, "no steps"},
		{"empty step", Request{JobID: "e", Package: pkg("x", "1", "", &ferryv1.Step{})}, "no kind"},
		{"archive without artifact", Request{JobID: "f", Package: pkg("x", "1", "", archiveStep("/opt/x", 0))}, "no artifact"},
		{"archive without file", Request{JobID: "g", Package: pkg("x", "1", "sha256:00", archiveStep("/opt/x", 0))}, "no artifact file"},
		{"bad format", Request{JobID: "h", ArtifactPath: "/dev/null", Package: pkg("x", "1", "sha256:00", &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: &ferryv1.ArchiveStep{Dest: "/x", Format: "rar"}}})}, "format"},
		{"bad mode", Request{JobID: "i", Package: pkg("x", "1", "", fileStep("/x", "", 0o17777))}, "mode"},
		{"unknown owner", Request{JobID: "j", Package: pkg("x", "1", "", &ferryv1.Step{Kind: &ferryv1.Step_File{File: &ferryv1.FileStep{Path: "/x", Owner: "no-such-user-ferry"}}})}, "owner"},
		{"empty check", Request{JobID: "k", Package: pkg("x", "1", "", checkStep(" ", "", 0))}, "no command"},
		{"no job id", Request{Package: pkg("x", "1", "", fileStep("/x", "", 0))}, "no ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := e.inst.Install(context.Background(), tc.req, nil, nil)
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), tc.want) {
				t.Errorf("message %q, want it to mention %q", u.GetMessage(), tc.want)
			}
		})
	}
	if ents, _ := os.ReadDir(e.root); len(ents) != 0 {
		t.Errorf("refused requests changed the root: %v", ents)
	}
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	must(t, os.WriteFile(file, nil, 0o644))
	for name, cfg := range map[string]Config{
		"relative root":  {Root: "root", StateDir: dir},
		"missing root":   {Root: filepath.Join(dir, "nope"), StateDir: dir},
		"root is a file": {Root: file, StateDir: dir},
		"no state dir":   {Root: dir},
		"missing visudo": {Root: dir, StateDir: dir, Visudo: filepath.Join(dir, "visudo")},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Error("New accepted a bad config")
			}
		})
	}
}

// A tree unchanged across versions shares its manifest; dropping the old
// version's record must not drop the manifest the newer one still uses.
func TestSharedManifestSurvivesPruning(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	a2, d2 := artifact(t, goV2)
	v := func(version, digest, goroot string) *ferryv1.Package {
		return pkg("go", version, digest, archiveStep("/usr/local/go", 1), envStep("go", nil, "GOROOT", goroot))
	}
	wantPhase(t, e.install(v("1", d1, "/a"), a1), succeeded)
	wantPhase(t, e.install(v("2", d1, "/b"), a1), succeeded) // same tree
	wantPhase(t, e.install(v("3", d2, "/b"), a2), succeeded) // drops version 1
	wantPhase(t, e.rollback("go"), succeeded)
	u := e.install(v("2", d1, "/b"), a1)
	wantPhase(t, u, unchanged)
	// And after a restart (which cleans unreferenced files) too.
	e.inst = e.open()
	wantPhase(t, e.install(v("2", d1, "/b"), a1), unchanged)
}

// TestSudoersWholePolicy: a fragment that is fine alone but breaks the
// node's whole policy (it redefines an alias of /etc/sudoers) is refused,
// the old fragment stays, and a good fragment's output says which checks
// ran.
func TestSudoersWholePolicy(t *testing.T) {
	visudo, err := exec.LookPath("visudo")
	if err != nil {
		t.Skip("visudo not installed (apt-get install sudo); the whole-policy check needs it")
	}
	e := newEnv(t)
	e.inst.visudo = visudo
	must(t, os.MkdirAll(e.path("/etc/sudoers.d"), 0o750))
	main := "Defaults env_reset\nUser_Alias ADMINS = alice\nroot ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n"
	if err := os.WriteFile(e.path("/etc/sudoers"), []byte(main), 0o440); err != nil {
		t.Fatal(err)
	}
	u := e.install(pkg("x", "1", "", sudoersStep("deploy", "deploy ALL=(root) NOPASSWD: /usr/bin/id")), "")
	wantPhase(t, u, succeeded)
	out := u.GetSteps()[0].GetOutput()
	for _, want := range []string{"ferry checker", "visudo -cf fragment", "visudo -c whole policy"} {
		if !strings.Contains(out, want) {
			t.Errorf("step output %q does not say %q ran", out, want)
		}
	}
	u = e.install(pkg("x", "2", "", sudoersStep("deploy", "User_Alias ADMINS = bob", "ADMINS ALL=(root) NOPASSWD: /usr/bin/id")), "")
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "ADMINS") {
		t.Errorf("message %q does not name the redefined alias", u.GetMessage())
	}
	if !strings.Contains(u.GetMessage(), "whole policy") {
		t.Errorf("message %q does not say the whole-policy check refused it", u.GetMessage())
	}
	if c := readFile(t, e.path("/etc/sudoers.d/deploy")); !strings.Contains(c, "/usr/bin/id") || strings.Contains(c, "bob") {
		t.Errorf("a refused fragment replaced the old one:\n%s", c)
	}
}

// With SweepInBackground, Install reports before the tree it no longer
// keeps is removed; the next job waits for that removal, and a tree a
// crash left behind before it (the process ended first) is removed by the
// next start. Rollback still finds the version kept.
func TestSweepInBackground(t *testing.T) {
	e := newEnv(t)
	open := func() *Installer {
		t.Helper()
		i, err := New(Config{Root: e.root, StateDir: e.state, MaxArchiveBytes: 64 << 20, MaxArchiveEntries: 10000, SweepInBackground: true})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return i
	}
	e.inst = open()
	kept := func() int {
		t.Helper()
		ents, _ := os.ReadDir(e.path("/opt/.ferry-app"))
		return len(ents)
	}
	var digests, artifacts []string
	for v := 1; v <= 4; v++ {
		a, d := artifact(t, map[string]string{"VERSION": string(rune('0' + v))})
		artifacts, digests = append(artifacts, a), append(digests, d)
	}
	for v := 1; v <= 2; v++ {
		wantPhase(t, e.install(pkg("app", string(rune('0'+v)), digests[v-1], archiveStep("/opt/app", 0)), artifacts[v-1]), succeeded)
	}
	e.inst.Settle()
	if n := kept(); n != 1 {
		t.Fatalf("%d trees kept after two installs, want 1", n)
	}

	// The sweep of the third install waits until release: Install has
	// returned by then, so the result did not wait for the removal.
	release := make(chan struct{})
	e.inst.hook = func(p string) {
		if p == "sweep" {
			<-release
		}
	}
	wantPhase(t, e.install(pkg("app", "3", digests[2], archiveStep("/opt/app", 0)), artifacts[2]), succeeded)
	if n := kept(); n != 2 {
		t.Errorf("%d trees in the hold directory while the sweep waits, want 2 (version 1's not yet removed)", n)
	}
	// A restart before the sweep ran removes the leftover.
	i2 := open()
	if n := kept(); n != 1 {
		t.Errorf("%d trees kept after a restart, want 1: the leftover of version 1 was not removed", n)
	}
	close(release)
	e.inst.Settle()
	e.inst = i2

	// The next job starts once the sweep is done, and rollback finds the
	// version kept.
	wantPhase(t, e.install(pkg("app", "4", digests[3], archiveStep("/opt/app", 0)), artifacts[3]), succeeded)
	e.inst.Settle()
	if n := kept(); n != 1 {
		t.Errorf("%d trees kept after the fourth install, want 1", n)
	}
	wantPhase(t, e.rollback("app"), succeeded)
	if got := readFile(t, e.path("/opt/app/VERSION")); got != "3" {
		t.Errorf("VERSION after rollback = %s, want 3", got)
	}
}
