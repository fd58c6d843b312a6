package pkgspec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func archiveStep(a *ferryv1.ArchiveStep) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: a}}
}
func envStep(e *ferryv1.EnvStep) *ferryv1.Step { return &ferryv1.Step{Kind: &ferryv1.Step_Env{Env: e}} }
func sudoersStep(s *ferryv1.SudoersStep) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Sudoers{Sudoers: s}}
}
func fileStep(f *ferryv1.FileStep) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_File{File: f}}
}
func checkStep(c *ferryv1.CheckStep) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Check{Check: c}}
}

func serviceStep(u string, a ferryv1.ServiceAction, timeout time.Duration) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Service{Service: &ferryv1.ServiceStep{Unit: u, Action: a, Timeout: durationpb.New(timeout)}}}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseValidFiles(t *testing.T) {
	tests := []struct {
		file string
		want *ferryv1.Package
	}{
		{"go.yaml", &ferryv1.Package{
			Name:     "go",
			Version:  "1.20.3",
			Artifact: &ferryv1.ArtifactRef{Name: "go1.20.3.linux-amd64.tar.gz@1.20.3"},
			Steps: []*ferryv1.Step{
				archiveStep(&ferryv1.ArchiveStep{Dest: "/usr/local/go", StripComponents: 1, KeepPrevious: 2, MaxBytes: 1 << 30}),
				envStep(&ferryv1.EnvStep{
					Name: "go",
					Vars: []*ferryv1.EnvVar{{Name: "GOROOT", Value: "/usr/local/go"}, {Name: "GOTOOLCHAIN", Value: "local"}},
					Path: []string{"/usr/local/go/bin"},
				}),
				sudoersStep(&ferryv1.SudoersStep{Name: "deploy", Rules: []string{"deploy ALL=(root) NOPASSWD: /usr/local/go/bin/go version"}}),
				checkStep(&ferryv1.CheckStep{Run: "go version", Expect: "go1.20.3", Timeout: durationpb.New(30 * time.Second)}),
			},
		}},
		{"full.yaml", &ferryv1.Package{
			Name:     "myapp",
			Version:  "2.0.0-rc.1+build.7",
			Artifact: &ferryv1.ArtifactRef{Name: "sha256:9796a2cbd1d6e3a4"},
			Steps: []*ferryv1.Step{
				archiveStep(&ferryv1.ArchiveStep{Dest: "/opt/myapp", StripComponents: 2, KeepPrevious: 3, AllowSetuid: true, MaxBytes: 500e6, MaxEntries: 10000, Format: "tar.gz"}),
				envStep(&ferryv1.EnvStep{
					Name: "myapp",
					Vars: []*ferryv1.EnvVar{
						// Order as written, not sorted.
						{Name: "MYAPP_HOME", Value: "/opt/myapp"},
						{Name: "MYAPP_GREETING", Value: "it's $(not) `run`\nsecond line"},
						{Name: "A_NUMBER", Value: "0755"},
					},
					Path: []string{"/opt/myapp/bin", "/opt/myapp/sbin"},
				}),
				sudoersStep(&ferryv1.SudoersStep{Name: "myapp_deploy", Rules: []string{
					"Cmnd_Alias MYAPP = /opt/myapp/bin/restart, /opt/myapp/bin/status",
					"deploy ALL=(root) NOPASSWD: MYAPP",
				}}),
				fileStep(&ferryv1.FileStep{Path: "/etc/myapp/config.toml", Content: []byte("listen = \":8080\"\ndata = \"/var/lib/myapp\"\n"), Mode: 0o640, Owner: "root", Group: "myapp"}),
				fileStep(&ferryv1.FileStep{Path: "/etc/myapp/key.bin", Content: []byte{0, 1, 2, 0xff}, Mode: 0o600}),
				fileStep(&ferryv1.FileStep{Path: "/etc/myapp/empty", Content: []byte{}, Mode: 0o4755, Owner: "0", Group: "0"}),
				checkStep(&ferryv1.CheckStep{Run: "/opt/myapp/bin/myapp --version", Expect: "2.0.0-rc.1", Timeout: durationpb.New(90 * time.Second)}),
				checkStep(&ferryv1.CheckStep{Run: "test -f /etc/myapp/empty", Timeout: durationpb.New(30 * time.Second)}),
			},
		}},
		{"config-bundle.yaml", &ferryv1.Package{
			Name:    "motd",
			Version: "1",
			// No mode in the file: the default, 0600 (it was 0644).
			Steps: []*ferryv1.Step{fileStep(&ferryv1.FileStep{Path: "/etc/motd", Content: []byte("Managed by Ferry.\n"), Mode: 0o600})},
		}},
		{"myapp-service.yaml", &ferryv1.Package{
			Name:    "myapp-config",
			Version: "3",
			Steps: []*ferryv1.Step{
				fileStep(&ferryv1.FileStep{Path: "/etc/myapp/config.toml", Content: []byte("listen = \":8080\"\n"), Mode: 0o644}),
				// A name without a type is a .service.
				serviceStep("myapp.service", ferryv1.ServiceAction_SERVICE_ACTION_RESTART, 45*time.Second),
				serviceStep("nginx.service", ferryv1.ServiceAction_SERVICE_ACTION_RELOAD, 30*time.Second),
				serviceStep("myapp-worker@blue.service", ferryv1.ServiceAction_SERVICE_ACTION_ENABLE, 30*time.Second),
				checkStep(&ferryv1.CheckStep{Run: "curl -fsS http://127.0.0.1:8080/healthz", Timeout: durationpb.New(30 * time.Second)}),
			},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data := readFile(t, filepath.Join("testdata", "valid", tt.file))
			got, err := Parse(tt.file, data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.Source != string(data) {
				t.Errorf("Source is not the file's text")
			}
			if got.ContentDigest != "" {
				t.Errorf("ContentDigest = %q before resolving; want empty", got.ContentDigest)
			}
			got.Source = ""
			if !proto.Equal(got, tt.want) {
				t.Errorf("Parse mismatch\ngot:  %v\nwant: %v", got, tt.want)
			}
		})
	}
}

// wantErr is one expected problem: its exact line and field, and a
// substring of its problem text.
type wantErr struct {
	line    int
	field   string
	problem string
}

func checkErrors(t *testing.T, file string, err error, want []wantErr) {
	t.Helper()
	if err == nil {
		t.Fatalf("Parse succeeded; want %d errors", len(want))
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("error is %T, want ErrorList: %v", err, err)
	}
	if len(list) != len(want) {
		t.Errorf("got %d errors, want %d:\n%v", len(list), len(want), err)
	}
	for i := range min(len(list), len(want)) {
		g, w := list[i], want[i]
		if g.File != file || g.Line != w.line || g.Field != w.field || !strings.Contains(g.Problem, w.problem) {
			t.Errorf("error %d:\ngot  %s:%d: %s: %s\nwant %s:%d: %s: ...%s...", i, g.File, g.Line, g.Field, g.Problem, file, w.line, w.field, w.problem)
		}
		if g.Fix == "" {
			t.Errorf("error %d (%v) has no fix", i, g)
		}
		if !strings.HasPrefix(g.Error(), file+":") {
			t.Errorf("error %d does not start with the file name: %v", i, g)
		}
	}
}

func TestParseInvalidFiles(t *testing.T) {
	tests := []struct {
		file string
		want []wantErr
	}{
		{"unknown-fields.yaml", []wantErr{
			{4, "descripton", "unknown field"},
			{8, "steps[0].archive.strip_component", "unknown field"},
			{9, "steps[1].env.paths", "unknown field"},
			{10, "steps[2].chek", "unknown step kind"},
		}},
		{"bad-types.yaml", []wantErr{
			{1, "name", "expected a string, got a list"},
			{7, "steps[0].archive.strip_components", `expected a whole number, got the string "1"`},
			{8, "steps[0].archive.allow_setuid", `expected true or false, got the string "yes"`},
			{9, "steps[0].archive.keep_previous", "expected a whole number, got the number 1.5"},
			{10, "steps[0].archive.max_bytes", `"lots" is not a valid size`},
			{13, "steps[1].env.vars", "expected a mapping of NAME: value, got a list"},
			{14, "steps[2].sudoers.rules", "expected a list, got the string"},
			{15, "steps[3].file.content", "expected a string, got a mapping"},
			{15, "steps[3].file.mode", "expected a file mode, got the boolean true"},
			{15, "steps[3].file.owner", "expected a string, got the boolean false"},
			{16, "steps[4].check.expect", "expected a string, got the boolean true"},
			{16, "steps[4].check.timeout", "expected a duration, got a list"},
		}},
		{"missing-required.yaml", []wantErr{
			{2, "name", "missing"},
			{2, "version", "missing"},
			{2, "steps", "missing"},
		}},
		{"missing-in-steps.yaml", []wantErr{
			{2, "version", "has no value"},
			{4, "steps[0].archive.dest", "missing"},
			{4, "steps[0].archive", "needs the package's artifact"},
			{5, "steps[1].env.name", "missing"},
			{7, "steps[2].sudoers.rules", "missing"},
			{9, "steps[3].file.path", "missing"},
			{10, "steps[4].check.run", "missing"},
			{11, "steps[5].env", "would set nothing"},
		}},
		{"paths.yaml", []wantErr{
			{5, "steps[0].archive.dest", "is a relative path"},
			{6, "steps[1].file.path", "contains '..'"},
			{7, "steps[2].file.path", "not in its simplest form"},
			{8, "steps[3].file.path", "control characters"},
			{9, "steps[4].file.path", "sudoers files cannot be written with a file step"},
			{10, "steps[5].env.path[1]", "contains ':'"},
			{10, "steps[5].env.path[2]", "listed twice"},
			{11, "steps[6].file.path", "/ is a directory"},
		}},
		{"env.yaml", []wantErr{
			{7, "steps[1].env.vars.PATH", "PATH cannot be set directly"},
			{8, "steps[1].env.name", `"go.sh" ends in .sh`},
			{10, "steps[2].env.name", "not a valid env file name"},
			{13, "steps[2].env.vars.GO-FLAGS", "not a valid variable name"},
			{14, "steps[2].env.vars.GOROOT", "set twice (first on line 12)"},
			{15, "steps[2].env.vars.EMPTY", "has no value"},
			{16, "steps[2].env.vars.9LIVES", "not a valid variable name"},
		}},
		{"sudoers.yaml", []wantErr{
			{4, "steps[0].sudoers.name", "contains '.', and sudo silently ignores such files"},
			{5, "steps[1].sudoers.name", "ends in '~', and sudo silently ignores such files"},
			{6, "steps[2].sudoers.name", "not a valid sudoers file name"},
			{11, "steps[3].sudoers.rules[1]", "empty rule"},
			{12, "steps[3].sudoers.rules[2]", "include directives are not allowed"},
			{13, "steps[3].sudoers.rules[3]", "spans several lines"},
			{14, "steps[4].sudoers.name", "/etc/sudoers.d/deploy is also written by steps[3].sudoers.name (line 8)"},
		}},
		{"service.yaml", []wantErr{
			{4, "steps[0].service.unit", "starts with '-', so systemctl would read it as an option"},
			{5, "steps[1].service.unit", "a shell metacharacter"},
			{6, "steps[2].service.unit", "is a path"},
			{7, "steps[3].service.unit", "a shell metacharacter"},
			{8, "steps[4].service.unit", "a template without an instance"},
			{9, "steps[5].service.action", `"restrat" is not a service action`},
			{10, "steps[6].service.timeout", "not more than zero"},
			{11, "steps[7].service.unit", "missing"},
			{12, "steps[8].service.unit", "cannot restart ferry-agent itself"},
		}},
		{"steps.yaml", []wantErr{
			{6, "steps[1].archive", "a second archive step"},
			{7, "steps[2]", `expected a step, got the string "check"`},
			{8, "steps[3]", "empty step"},
			{9, "steps[4]", "exactly one kind, got check and env"},
			{11, "steps[5]", "expected a step, got a list"},
		}},
		{"conflicts.yaml", []wantErr{
			{6, "steps[1].file.path", "/opt/app/current/config overlaps /opt/app/current written by steps[0].archive.dest (line 5)"},
			{8, "steps[3].env.name", "/etc/profile.d/app.sh is also written by steps[2].env.name (line 7)"},
			{9, "steps[4].file.path", "/opt/app overlaps /opt/app/current"},
		}},
		// The unclosed {...} opens on line 4; the YAML library's own
		// message would say line 3.
		{"syntax.yaml", []wantErr{{4, "", "invalid YAML: did not find expected ',' or '}'"}}},
		{"multi-doc.yaml", []wantErr{{4, "", "more than one YAML document"}}},
		{"aliases.yaml", []wantErr{{5, "", "YAML alias *c is not supported"}}},
		{"empty.yaml", []wantErr{{0, "", "the file is empty"}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data := readFile(t, filepath.Join("testdata", "invalid", tt.file))
			got, err := Parse(tt.file, data)
			if got != nil {
				t.Errorf("Parse returned a package with an error")
			}
			checkErrors(t, tt.file, err, tt.want)
		})
	}
}

// TestEveryInvalidFileIsTested keeps the table above in step with the
// files in testdata/invalid.
func TestEveryInvalidFileIsTested(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) < 10 {
		t.Fatalf("glob: %v, %d files", err, len(files))
	}
	for _, f := range files {
		if _, err := Parse(f, readFile(t, f)); err == nil {
			t.Errorf("%s parses without error", f)
		}
	}
	valid, _ := filepath.Glob("testdata/valid/*.yaml")
	for _, f := range valid {
		if _, err := Parse(f, readFile(t, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	const src = `name: go
version: 1.20.3
artifact: go1.20.3.linux-amd64.tar.gz
steps:
  - archive: {dest: /usr/local/go, strip_components: 1}
  - env:
      vars: {PATH: /usr/local/go/bin}
      name: go
`
	_, err := Parse("go.yaml", []byte(src))
	const want = "go.yaml:7: steps[1].env.vars.PATH: PATH cannot be set directly; use env.path to add directories"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Line != 7 || fe.Column != 14 {
		t.Errorf("errors.As(*FieldError) = %+v; want line 7 column 14", fe)
	}

	_, err = Parse("", []byte("name: go\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "<input>:1: version: missing;") {
		t.Errorf("unnamed input: got %v", err)
	}
	if n := strings.Count(err.Error(), "\n"); n != 1 {
		t.Errorf("want two problems on two lines, got %q", err)
	}
}

// base is a valid package that the inline cases below break one field of.
const base = `name: go
version: 1.20.3
artifact: go1.20.3.linux-amd64.tar.gz
steps:
`

func TestParseInline(t *testing.T) {
	bigContent := "  - file: {path: /etc/big, content: \"" + strings.Repeat("x", MaxContentSize+1) + "\"}\n"
	var manySteps strings.Builder
	manySteps.WriteString("name: many\nversion: 1\nsteps:\n")
	for range MaxSteps + 1 {
		manySteps.WriteString("  - check: {run: \"true\"}\n")
	}
	tests := []struct {
		name string
		src  string
		want []wantErr // nil: valid
	}{
		// name and version
		{"name upper case", "name: Go\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{1, "name", `"Go" is not a valid package name`}}},
		{"name with @", "name: go@1\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{1, "name", "not a valid package name"}}},
		{"name trailing dash", "name: go-\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{1, "name", "not a valid package name"}}},
		{"name too long", "name: " + strings.Repeat("a", 65) + "\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{1, "name", "not a valid package name"}}},
		{"name 64 chars", "name: " + strings.Repeat("a", 64) + "\nversion: 1\nsteps: [{check: {run: x}}]\n", nil},
		{"name is null", "name: ~\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{1, "name", "has no value"}}},
		{"version with space", "name: go\nversion: 1.0 beta\nsteps: [{check: {run: x}}]\n", []wantErr{{2, "version", `"1.0 beta" is not a valid version`}}},
		{"version with slash", "name: go\nversion: 1/2\nsteps: [{check: {run: x}}]\n", []wantErr{{2, "version", "not a valid version"}}},
		{"version bool", "name: go\nversion: true\nsteps: [{check: {run: x}}]\n", []wantErr{{2, "version", "got the boolean true"}}},
		{"version float kept as written", "name: go\nversion: 1.10\nsteps: [{check: {run: x}}]\n", nil},
		{"version debian style", "name: go\nversion: 1.0~rc1-2\nsteps: [{check: {run: x}}]\n", nil},

		// top level shape
		{"top level list", "- name: go\n", []wantErr{{1, "", "expected a mapping, got a list"}}},
		{"top level scalar", "go\n", []wantErr{{1, "", `expected a mapping, got the string "go"`}}},
		{"top level null", "~\n", []wantErr{{1, "", "the file has no content"}}},
		{"steps mapping", base + "  archive: {dest: /usr/local/go}\n", []wantErr{{5, "steps", "expected a list of steps, got a mapping"}}},
		{"steps empty", "name: go\nversion: 1\nsteps: []\n", []wantErr{{3, "steps", "no steps"}}},
		{"too many steps", manySteps.String(), []wantErr{{4, "steps", "more than the 100 allowed"}}},
		{"duplicate top key", "name: go\nname: go2\nversion: 1\nsteps: [{check: {run: x}}]\n", []wantErr{{2, "name", "set twice (first on line 1)"}}},
		{"merge key refused", "name: go\nversion: 1\nsteps:\n  - check: {<<: {run: x}}\n", []wantErr{{4, "steps[0].check.<<", "unknown field"}, {4, "steps[0].check.run", "missing"}}},
		{"file too large", strings.Repeat("#", MaxFileSize+1), []wantErr{{0, "", "more than the 4194304 allowed"}}},
		{"tab indentation", "name: go\nversion: 1\nsteps:\n\t- check: {run: x}\n", []wantErr{{4, "", "invalid YAML"}}},
		{"unclosed quote", "name: \"go\nversion: 1\n", []wantErr{{3, "", "invalid YAML"}}},
		{"unknown anchor", "name: *x\n", []wantErr{{0, "", "invalid YAML: unknown anchor 'x' referenced"}}},

		// artifact references
		{"artifact name@version", base + "  - archive: {dest: /usr/local/go}\n", nil},
		{"artifact sha256 full", "name: go\nversion: 1\nartifact: sha256:" + strings.Repeat("ab", 32) + "\nsteps: [{archive: {dest: /opt/go}}]\n", nil},
		{"artifact sha256 short", "name: go\nversion: 1\nartifact: sha256:abc\nsteps: [{archive: {dest: /opt/go}}]\n", []wantErr{{3, "artifact", "has 3 hex digits"}}},
		{"artifact sha256 upper", "name: go\nversion: 1\nartifact: sha256:ABCDEF0123\nsteps: [{archive: {dest: /opt/go}}]\n", []wantErr{{3, "artifact", "upper-case hex"}}},
		{"artifact sha256 not hex", "name: go\nversion: 1\nartifact: sha256:xyz12345\nsteps: [{archive: {dest: /opt/go}}]\n", []wantErr{{3, "artifact", "not a sha256 digest"}}},
		{"artifact with space", "name: go\nversion: 1\nartifact: go 1.20\nsteps: [{archive: {dest: /opt/go}}]\n", []wantErr{{3, "artifact", "not a valid artifact reference"}}},
		{"artifact empty version", "name: go\nversion: 1\nartifact: go@\nsteps: [{archive: {dest: /opt/go}}]\n", []wantErr{{3, "artifact", "not a valid artifact reference"}}},
		{"artifact unused", "name: go\nversion: 1\nartifact: go.tar.gz\nsteps: [{check: {run: x}}]\n", []wantErr{{3, "artifact", "no step uses the artifact"}}},

		// agent_update
		{"agent_update", "name: ferry-agent\nversion: 1.4.0\nartifact: ferry-agent-1.4.0\nsteps:\n  - agent_update: {expect_version: 1.4.0, reconnect_timeout: 90s}\n", nil},
		{"agent_update bare", "name: ferry-agent\nversion: 1.4.0\nartifact: ferry-agent-1.4.0\nsteps:\n  - agent_update:\n", nil},
		{"agent_update without artifact", "name: ferry-agent\nversion: 1\nsteps:\n  - agent_update: {}\n", []wantErr{{4, "steps[0].agent_update", "needs the package's artifact"}}},
		{"agent_update with archive", "name: ferry-agent\nversion: 1\nartifact: a.tar.gz\nsteps:\n  - archive: {dest: /opt/a}\n  - agent_update: {}\n", []wantErr{{6, "steps[1].agent_update", "also used by steps[0].archive"}}},
		{"agent_update not last", "name: ferry-agent\nversion: 1\nartifact: a\nsteps:\n  - agent_update: {}\n  - check: {run: x}\n", []wantErr{{6, "steps[1].check", "a step after steps[0].agent_update"}}},
		{"agent_update timeout too short", "name: ferry-agent\nversion: 1\nartifact: a\nsteps:\n  - agent_update: {reconnect_timeout: 1s}\n", []wantErr{{5, "steps[0].agent_update.reconnect_timeout", "between 5s and 30m"}}},
		{"agent_update unknown field", "name: ferry-agent\nversion: 1\nartifact: a\nsteps:\n  - agent_update: {path: /x}\n", []wantErr{{5, "steps[0].agent_update.path", "unknown field"}}},
		{"archive without artifact", "name: go\nversion: 1\nsteps:\n  - archive: {dest: /opt/go}\n", []wantErr{{4, "steps[0].archive", "needs the package's artifact"}}},

		// archive
		{"dest root", base + "  - archive: {dest: /}\n", []wantErr{{5, "steps[0].archive.dest", "/ is a system directory"}}},
		{"dest /usr", base + "  - archive: {dest: /usr}\n", []wantErr{{5, "steps[0].archive.dest", "/usr is a system directory"}}},
		{"dest /usr/local", base + "  - archive: {dest: /usr/local}\n", []wantErr{{5, "steps[0].archive.dest", "system directory"}}},
		{"dest /etc/sudoers.d", base + "  - archive: {dest: /etc/sudoers.d}\n", []wantErr{{5, "steps[0].archive.dest", "system directory"}}},
		{"dest /opt/go", base + "  - archive: {dest: /opt/go}\n", nil},
		{"dest empty", base + "  - archive: {dest: \"\"}\n", []wantErr{{5, "steps[0].archive.dest", "empty path"}}},
		{"dest trailing slash", base + "  - archive: {dest: /usr/local/go/}\n", []wantErr{{5, "steps[0].archive.dest", `"/usr/local/go/" is not in its simplest form`}}},
		{"dest dot", base + "  - archive: {dest: /usr/local/./go}\n", []wantErr{{5, "steps[0].archive.dest", "not in its simplest form"}}},
		{"strip_components negative", base + "  - archive: {dest: /opt/go, strip_components: -1}\n", []wantErr{{5, "steps[0].archive.strip_components", "out of range"}}},
		{"strip_components huge", base + "  - archive: {dest: /opt/go, strip_components: 256}\n", []wantErr{{5, "steps[0].archive.strip_components", "out of range"}}},
		{"keep_previous 0", base + "  - archive: {dest: /opt/go, keep_previous: 0}\n", []wantErr{{5, "steps[0].archive.keep_previous", "nothing to roll back to"}}},
		{"keep_previous 11", base + "  - archive: {dest: /opt/go, keep_previous: 11}\n", []wantErr{{5, "steps[0].archive.keep_previous", "out of range"}}},
		{"max_bytes 0", base + "  - archive: {dest: /opt/go, max_bytes: 0}\n", []wantErr{{5, "steps[0].archive.max_bytes", "not a valid size"}}},
		{"max_bytes bad unit", base + "  - archive: {dest: /opt/go, max_bytes: 2XB}\n", []wantErr{{5, "steps[0].archive.max_bytes", "not a valid size"}}},
		{"max_bytes overflow", base + "  - archive: {dest: /opt/go, max_bytes: 99999999999TiB}\n", []wantErr{{5, "steps[0].archive.max_bytes", "not a valid size"}}},
		{"max_bytes plain", base + "  - archive: {dest: /opt/go, max_bytes: 1048576}\n", nil},
		{"max_entries 0", base + "  - archive: {dest: /opt/go, max_entries: 0}\n", []wantErr{{5, "steps[0].archive.max_entries", "out of range"}}},
		{"max_entries overflow", base + "  - archive: {dest: /opt/go, max_entries: 18446744073709551616}\n", []wantErr{{5, "steps[0].archive.max_entries", "18446744073709551616 is out of range"}}},
		{"format unknown", base + "  - archive: {dest: /opt/go, format: rar}\n", []wantErr{{5, "steps[0].archive.format", `unknown archive format "rar"`}}},

		// env
		{"env only path", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, path: [/opt/go/bin]}\n", nil},
		{"env empty vars and path", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, vars: {}, path: []}\n", nil},
		{"env path not list", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, path: /opt/go/bin}\n", []wantErr{{6, "steps[1].env.path", "expected a list"}}},
		{"env var nul", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, vars: {A: \"x\\0y\"}}\n", []wantErr{{6, "steps[1].env.vars.A", "NUL"}}},
		{"env var list value", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, vars: {A: [x]}}\n", []wantErr{{6, "steps[1].env.vars.A", "expected a string, got a list"}}},
		{"env var mapping key", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, vars: {[A]: x}}\n", []wantErr{{6, "steps[1].env.vars", "a key is a list"}}},
		{"env hostile value kept verbatim", base + "  - archive: {dest: /opt/go}\n  - env: {name: go, vars: {A: \"'; rm -rf / #\"}}\n", nil},
		{"env name slash", base + "  - archive: {dest: /opt/go}\n  - env: {name: ../go}\n", []wantErr{{6, "steps[1].env.name", "not a valid env file name"}, {6, "steps[1].env", "would set nothing"}}},

		// file
		{"mode 0644", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: 0644}\n", nil},
		{"mode 0o755", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: 0o755}\n", nil},
		{"mode too big", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: 17777}\n", []wantErr{{6, "steps[1].file.mode", "more than 07777"}}},
		{"mode not octal", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: \"0x1ff\"}\n", []wantErr{{6, "steps[1].file.mode", "not an octal mode"}}},
		{"mode symbolic", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: u+rw}\n", []wantErr{{6, "steps[1].file.mode", "not an octal mode"}}},
		{"mode zero", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, mode: \"0000\"}\n", []wantErr{{6, "steps[1].file.mode", "unusable"}}},
		{"content too big", base + "  - archive: {dest: /opt/go}\n" + bigContent, []wantErr{{6, "steps[1].file.content", "more than the 1048576 allowed"}}},
		{"content bad base64", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: !!binary \"@@@\"}\n", []wantErr{{6, "steps[1].file.content", "not valid base64"}}},
		{"content custom tag", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: !secret x}\n", []wantErr{{6, "steps[1].file.content", "unexpected tag !secret"}}},
		{"owner with space", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, owner: a b}\n", []wantErr{{6, "steps[1].file.owner", `"a b" is not a valid user name`}}},
		{"group with colon", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x, group: \"a:b\"}\n", []wantErr{{6, "steps[1].file.group", "not a valid group name"}}},
		{"file /etc/sudoers", base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/sudoers, content: x}\n", []wantErr{{6, "steps[1].file.path", "sudoers files cannot be written"}}},
		{"file relative", base + "  - archive: {dest: /opt/go}\n  - file: {path: etc/a, content: x}\n", []wantErr{{6, "steps[1].file.path", "relative path"}}},
		{"file path dotdot only", base + "  - archive: {dest: /opt/go}\n  - file: {path: /.., content: x}\n", []wantErr{{6, "steps[1].file.path", "contains '..'"}}},
		{"file beside archive dest", base + "  - archive: {dest: /opt/go}\n  - file: {path: /opt/gopher, content: x}\n", nil},

		// check
		{"timeout zero", base + "  - archive: {dest: /opt/go}\n  - check: {run: x, timeout: 0s}\n", []wantErr{{6, "steps[1].check.timeout", "not more than zero"}}},
		{"timeout negative", base + "  - archive: {dest: /opt/go}\n  - check: {run: x, timeout: -5s}\n", []wantErr{{6, "steps[1].check.timeout", "not more than zero"}}},
		{"timeout too long", base + "  - archive: {dest: /opt/go}\n  - check: {run: x, timeout: 2h}\n", []wantErr{{6, "steps[1].check.timeout", "more than 1h0m0s"}}},
		{"timeout garbage", base + "  - archive: {dest: /opt/go}\n  - check: {run: x, timeout: soon}\n", []wantErr{{6, "steps[1].check.timeout", `"soon" is not a duration`}}},
		{"run blank", base + "  - archive: {dest: /opt/go}\n  - check: {run: \"  \"}\n", []wantErr{{6, "steps[1].check.run", "empty command"}}},
		{"run multi-line", base + "  - archive: {dest: /opt/go}\n  - check:\n      run: |\n        set -e\n        go version\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("p.yaml", []byte(tt.src))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if got == nil {
					t.Fatal("Parse returned nil package and nil error")
				}
				return
			}
			checkErrors(t, "p.yaml", err, tt.want)
		})
	}
}

func TestParseDefaults(t *testing.T) {
	src := base + "  - archive: {dest: /opt/go}\n  - file: {path: /etc/a, content: x}\n  - check: {run: x}\n"
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Steps[0].GetArchive().GetKeepPrevious(); got != 1 {
		t.Errorf("keep_previous default = %d, want 1", got)
	}
	if got := p.Steps[1].GetFile().GetMode(); got != 0o600 {
		t.Errorf("mode default = %o, want 600", got)
	}
	if got := p.Steps[2].GetCheck().GetTimeout().AsDuration(); got != 30*time.Second {
		t.Errorf("timeout default = %v, want 30s", got)
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString(base)
	b.WriteString("  - archive: {dest: /opt/go}\n")
	for range 80 {
		b.WriteString("  - check: {run: x, bogus: 1}\n")
	}
	_, err := Parse("p.yaml", []byte(b.String()))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("got %v", err)
	}
	if len(list) != maxErrors+1 || !strings.Contains(list[maxErrors].Problem, "more than 50 problems") {
		t.Errorf("got %d errors, last %v; want %d and a 'more than 50 problems' note last", len(list), list[len(list)-1], maxErrors+1)
	}
	for i, e := range list[:maxErrors] {
		if want := 6 + i; e.Line != want || e.Field != fmt.Sprintf("steps[%d].check.bogus", i+1) {
			t.Errorf("error %d: %v; want line %d", i, e, want)
		}
	}
}

type fakeResolver map[string]*ferryv1.Artifact

var errNotFound = errors.New("not found")

func (f fakeResolver) ResolveArtifact(ref string) (*ferryv1.Artifact, error) {
	if a, ok := f[ref]; ok {
		return a, nil
	}
	return nil, errNotFound
}

var goDigest = "sha256:" + strings.Repeat("9796", 16)

func TestParseAndResolve(t *testing.T) {
	goArtifact := &ferryv1.Artifact{Digest: goDigest, Name: "go1.20.3.linux-amd64.tar.gz", Version: "1.20.3", Size: 100 << 20}
	r := fakeResolver{
		"go1.20.3.linux-amd64.tar.gz@1.20.3": goArtifact,
		"sha256:97969796":                    goArtifact,
		"broken":                             {Digest: "md5:abc", Name: "broken"},
	}
	t.Run("resolved", func(t *testing.T) {
		p, err := ParseAndResolve("go.yaml", readFile(t, "testdata/valid/go.yaml"), r)
		if err != nil {
			t.Fatal(err)
		}
		want := &ferryv1.ArtifactRef{Digest: goDigest, Name: "go1.20.3.linux-amd64.tar.gz", Size: 100 << 20}
		if !proto.Equal(p.Artifact, want) {
			t.Errorf("artifact = %v, want %v", p.Artifact, want)
		}
		if p.ContentDigest != ContentDigest(p) || !digestRE.MatchString(p.ContentDigest) {
			t.Errorf("ContentDigest = %q", p.ContentDigest)
		}
	})
	t.Run("by digest prefix gives the same content", func(t *testing.T) {
		archive := "  - archive: {dest: /usr/local/go}\n"
		byName := strings.Replace(base, "go1.20.3.linux-amd64.tar.gz", "go1.20.3.linux-amd64.tar.gz@1.20.3", 1) + archive
		byDigest := strings.Replace(base, "go1.20.3.linux-amd64.tar.gz", "sha256:97969796", 1) + archive
		a, err := ParseAndResolve("a.yaml", []byte(byName), r)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseAndResolve("b.yaml", []byte(byDigest), r)
		if err != nil {
			t.Fatal(err)
		}
		if a.ContentDigest != b.ContentDigest {
			t.Errorf("same artifact by name and by digest: content digests differ")
		}
		if b.Artifact.Name != "go1.20.3.linux-amd64.tar.gz" {
			t.Errorf("artifact name after resolving by digest = %q, want the artifact's name", b.Artifact.Name)
		}
	})
	t.Run("not found", func(t *testing.T) {
		src := "# the Go toolchain\nname: go\nversion: 1.20.3\nartifact: go1.20.4.linux-amd64.tar.gz\nsteps:\n  - archive: {dest: /usr/local/go}\n"
		_, err := ParseAndResolve("go.yaml", []byte(src), r)
		checkErrors(t, "go.yaml", err, []wantErr{{4, "artifact", `cannot resolve "go1.20.4.linux-amd64.tar.gz": not found`}})
		if !errors.Is(err, errNotFound) {
			t.Errorf("error does not wrap the resolver's: %v", err)
		}
		if !strings.HasPrefix(err.Error(), "go.yaml:4: artifact: cannot resolve") {
			t.Errorf("got %q", err)
		}
	})
	t.Run("invalid digest from resolver", func(t *testing.T) {
		src := "name: go\nversion: 1.20.3\nartifact: broken\nsteps:\n  - archive: {dest: /usr/local/go}\n"
		_, err := ParseAndResolve("go.yaml", []byte(src), r)
		checkErrors(t, "go.yaml", err, []wantErr{{3, "artifact", "invalid digest"}})
	})
	t.Run("no artifact needs no resolver", func(t *testing.T) {
		p, err := ParseAndResolve("m.yaml", readFile(t, "testdata/valid/config-bundle.yaml"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.ContentDigest == "" {
			t.Error("ContentDigest not set")
		}
	})
	t.Run("parse errors come first", func(t *testing.T) {
		_, err := ParseAndResolve("x.yaml", []byte("name: go\n"), r)
		checkErrors(t, "x.yaml", err, []wantErr{{1, "version", "missing"}, {1, "steps", "missing"}})
	})
}

func parseDigest(t *testing.T, name string, src []byte) string {
	t.Helper()
	p, err := Parse(name, src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return ContentDigest(p)
}

// goBlockDigest pins the canonical encoding: stored packages are compared
// by this digest across controller versions, so it must never change by
// accident. If the encoding has to change, bump contentVersion.
const goBlockDigest = "sha256:61ae98353b7ba477105eb9e48f3d5f39e0befb4ef760300136e96716b35ef8f5"

func TestContentDigestIgnoresFormatting(t *testing.T) {
	want := parseDigest(t, "go-block.yaml", readFile(t, "testdata/digest/go-block.yaml"))
	if want != goBlockDigest {
		t.Errorf("digest of go-block.yaml = %s, want the pinned %s", want, goBlockDigest)
	}
	for _, f := range []string{"go-flow.yaml", "go-literal.yaml"} {
		t.Run(f, func(t *testing.T) {
			if got := parseDigest(t, f, readFile(t, filepath.Join("testdata", "digest", f))); got != want {
				t.Errorf("digest %s, want %s (same content as go-block.yaml)", got, want)
			}
		})
	}
	t.Run("record fields and defaults", func(t *testing.T) {
		p, err := Parse("go-block.yaml", readFile(t, "testdata/digest/go-block.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		p.Source, p.CreatedBy, p.ContentDigest = "other text", "admin", "sha256:old"
		// A package built in code with the defaults left zero.
		p.Steps[0].GetArchive().KeepPrevious = 0
		p.Steps[4].GetCheck().Timeout = nil
		if got := ContentDigest(p); got != want {
			t.Errorf("digest changed with Source/CreatedBy/ContentDigest or zero defaults: %s", got)
		}
	})
}

func TestContentDigestChangesWithContent(t *testing.T) {
	src := string(readFile(t, "testdata/digest/go-block.yaml"))
	orig := parseDigest(t, "go-block.yaml", []byte(src))
	tests := []struct{ name, old, new string }{
		{"name", "name: go", "name: golang"},
		{"version", "version: 1.20.3", "version: 1.20.4"},
		{"artifact ref", "artifact: go1.20.3.linux-amd64.tar.gz", "artifact: go1.20.4.linux-amd64.tar.gz"},
		{"dest", "dest: /usr/local/go\n", "dest: /usr/local/go2\n"},
		{"strip_components", "strip_components: 1", "strip_components: 2"},
		{"keep_previous", "strip_components: 1", "strip_components: 1\n      keep_previous: 2"},
		{"allow_setuid", "strip_components: 1", "strip_components: 1\n      allow_setuid: true"},
		{"max_bytes", "strip_components: 1", "strip_components: 1\n      max_bytes: 1GiB"},
		{"max_entries", "strip_components: 1", "strip_components: 1\n      max_entries: 5"},
		{"format", "strip_components: 1", "strip_components: 1\n      format: tar.gz"},
		{"env name", "name: go\n      vars", "name: golang\n      vars"},
		{"env value", "GOFLAGS: -mod=readonly", "GOFLAGS: -mod=mod"},
		{"env var order", "        GOROOT: /usr/local/go\n        GOFLAGS: -mod=readonly", "        GOFLAGS: -mod=readonly\n        GOROOT: /usr/local/go"},
		{"env var moved into value", "        GOROOT: /usr/local/go\n        GOFLAGS: -mod=readonly", "        GOROOT: /usr/local/goGOFLAGS-mod=readonly"},
		{"path added", "        - /usr/local/go/bin", "        - /usr/local/go/bin\n        - /usr/local/bin"},
		{"sudoers name", "name: deploy", "name: deployer"},
		{"sudoers rule", "/opt/myapp/bin/*", "/opt/myapp/bin/restart"},
		// A rule added to the list changes the digest. (Split halves of one
		// rule are no longer a valid package: apply runs the sudoers checker.)
		{"sudoers rule split", `- "deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"`, `- "deploy ALL=(root) NOPASSWD: /opt/myapp/bin/x"` + "\n        - " + `"deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"`},
		{"file path", "path: /etc/go/env", "path: /etc/go/env2"},
		{"file content", `GOTOOLCHAIN=local\n`, `GOTOOLCHAIN=auto\n`},
		{"file mode", `mode: "0644"`, `mode: "0600"`},
		{"file allow_sensitive", `content: "GOTOOLCHAIN=local\n"`, `content: "GOTOOLCHAIN=local\n"` + "\n      allow_sensitive: true"},
		{"file owner", `content: "GOTOOLCHAIN=local\n"`, `content: "GOTOOLCHAIN=local\n"` + "\n      owner: root"},
		{"file group", `content: "GOTOOLCHAIN=local\n"`, `content: "GOTOOLCHAIN=local\n"` + "\n      group: root"},
		{"check run", "run: go version", "run: go version -m"},
		{"check expect", "expect: go1.20.3", "expect: go1.20"},
		{"check timeout", "expect: go1.20.3", "expect: go1.20.3\n      timeout: 31s"},
		{"step order", "  - sudoers:\n      name: deploy\n      rules:\n        - \"deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*\"\n", ""},
	}
	seen := map[string]string{orig: "original"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(src, tt.old) {
				t.Fatalf("test bug: %q not in the file", tt.old)
			}
			changed := strings.Replace(src, tt.old, tt.new, 1)
			if tt.name == "step order" { // move the sudoers step to the end
				changed += "  - sudoers:\n      name: deploy\n      rules:\n        - \"deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*\"\n"
			}
			got := parseDigest(t, "changed.yaml", []byte(changed))
			if prev, dup := seen[got]; dup {
				t.Errorf("digest equals that of %s", prev)
			}
			seen[got] = tt.name
		})
	}
	t.Run("resolved digest", func(t *testing.T) {
		a := &ferryv1.Artifact{Digest: goDigest, Name: "go1.20.3.linux-amd64.tar.gz"}
		b := &ferryv1.Artifact{Digest: "sha256:" + strings.Repeat("0", 64), Name: "go1.20.3.linux-amd64.tar.gz"}
		p1, err1 := ParseAndResolve("a.yaml", []byte(src), fakeResolver{"go1.20.3.linux-amd64.tar.gz": a})
		p2, err2 := ParseAndResolve("a.yaml", []byte(src), fakeResolver{"go1.20.3.linux-amd64.tar.gz": b})
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if p1.ContentDigest == p2.ContentDigest {
			t.Error("same YAML resolving to different artifacts gives the same content digest")
		}
		if p1.ContentDigest == orig {
			t.Error("resolved and unresolved packages share a digest")
		}
	})
}

func TestAliasReportedOnce(t *testing.T) {
	src := "x: &a [1, 2]\nname: [*a, *a, *a]\nversion: *a\n"
	_, err := Parse("p.yaml", []byte(src))
	checkErrors(t, "p.yaml", err, []wantErr{{2, "", "YAML alias *a is not supported"}})
}

// TestSudoersRulesCheckedAtApply: a rule visudo would refuse is refused at
// apply with the rule's file:line, not node by node.
func TestSudoersRulesCheckedAtApply(t *testing.T) {
	tests := []struct{ name, rule, want string }{
		{"continuation", `deploy ALL=(root) NOPASSWD: /opt/x \`, "rules[1]"},
		{"unknown Defaults", `Defaults bogus_option_xyz`, "bogus_option_xyz"},
		{"relative command", `deploy ALL=(root) NOPASSWD: ls`, "rules[1]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := "name: x\nversion: \"1\"\nsteps:\n  - sudoers:\n      name: deploy\n      rules:\n        - \"deploy ALL=(root) NOPASSWD: /usr/bin/id\"\n        - '" + tc.rule + "'\n"
			_, err := Parse("x.yaml", []byte(src))
			if err == nil {
				t.Fatalf("rule %q accepted at apply", tc.rule)
			}
			if !strings.Contains(err.Error(), "x.yaml:8") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want x.yaml:8 and %q", err, tc.want)
			}
		})
	}
}
