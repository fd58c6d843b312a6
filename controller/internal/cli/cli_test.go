package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestPrintTable(t *testing.T) {
	type row struct {
		name string
		n    int
	}
	for _, tc := range []struct {
		name  string
		items []row
		want  string
	}{
		{"header only", nil, "NAME  N\n"},
		{"aligned", []row{{"a", 1}, {"longer", 22}}, "NAME    N\na       1\nlonger  22\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			a := &app{stdout: &out}
			if err := printTable(a, []string{"NAME", "N"}, tc.items, func(r row) []string { return []string{r.name, strconv.Itoa(r.n)} }); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("got %q, want %q", out.String(), tc.want)
			}
		})
	}
}

// ferryctl nodes --disk shows each file system apart, so a full state dir
// is seen as such; an agent that reports only the install root's free
// space still gets a row.
func TestPrintDisks(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out}
	nodes := []*ferryv1.Node{
		{Id: "n1", DiskFreeBytes: 40 << 30, Disks: []*ferryv1.DiskSpace{
			{Path: "/var/lib/ferry-agent", Uses: []string{"state dir"}, FreeBytes: 12897484, TotalBytes: 50 << 20},
			{Path: "/", Uses: []string{"install root", "/usr/local/go"}, FreeBytes: 40 << 30, TotalBytes: 100 << 30},
		}},
		{Id: "old", DiskFreeBytes: 3 << 30},
		{Id: "new"},
	}
	if err := a.printDisks(nodes); err != nil {
		t.Fatal(err)
	}
	want := "NODE  FREE      SIZE       PATH                  HOLDS\n" +
		"n1    12.3 MiB  50.0 MiB   /var/lib/ferry-agent  state dir\n" +
		"n1    40.0 GiB  100.0 GiB  /                     install root, /usr/local/go\n" +
		"old   3.0 GiB   -          -                     install root\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

// TestCommands runs the unary commands against a real controller and checks
// what scripts parse: exit codes, table headers, text lines and errors.
func TestCommands(t *testing.T) {
	cfg := startController(t)
	dir := t.TempDir()
	tarball, sumFile, _ := goTarball(t, dir)
	pkg := filepath.Join(dir, "go.yaml")
	if err := os.WriteFile(pkg, []byte("name: go\nversion: 1.20.3\nartifact: go1.20.3.linux-amd64.tar.gz@1.20.3\nsteps:\n  - archive: {dest: /usr/local/go, strip_components: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("name: go\n# "+strings.Repeat("x", 10<<20)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	latin1 := filepath.Join(dir, "latin1.yaml")
	if err := os.WriteFile(latin1, []byte("name: go\nversion: 1.20.3\n# caf\xe9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notFound := "Error: rollout \"nope\": not found; list rollouts with `ferryctl rollout list`\n"
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stdout     []string // each must appear
		stdoutOnly string   // when set, stdout must be exactly this
		stderr     string   // exact
	}{
		{name: "push", args: []string{"artifact", "push", tarball, "--checksum-file", sumFile}, stdout: []string{"pushed: sha256:"}},
		{name: "apply", args: []string{"package", "apply", "-f", pkg}, stdout: []string{"package go@1.20.3 created; artifact go1.20.3.linux-amd64.tar.gz (sha256:", "), 1 steps\n"}},
		{name: "apply again", args: []string{"package", "apply", "-f", pkg}, stdout: []string{"package go@1.20.3 unchanged (identical content already stored)"}},
		{name: "apply without -f", args: []string{"package", "apply"}, code: 1, stderr: "Error: -f FILE is required\n"},
		{name: "package list", args: []string{"package", "list"}, stdout: []string{"PACKAGE    ARTIFACT                     DIGEST               STEPS  CREATED  ", "go@1.20.3  go1.20.3.linux-amd64.tar.gz  sha256:"}},
		{name: "package list other", args: []string{"package", "list", "--name", "x"}, stdoutOnly: "PACKAGE  ARTIFACT  DIGEST  STEPS  CREATED  BY\n"},
		{name: "package show", args: []string{"package", "show", "go@1.20.3"}, stdout: []string{"Package:   go@1.20.3\nArtifact:  go1.20.3.linux-amd64.tar.gz sha256:", "\n\nname: go\n"}},
		{name: "package show json", args: []string{"-o", "json", "package", "show", "go@1.20.3"}, stdout: []string{`"name":`, `"content_digest":`}},
		{name: "package show bad ref", args: []string{"package", "show", "go"}, code: 1, stderr: "Error: \"go\" is not a package reference: want NAME@VERSION, e.g. go@1.20.3\n"},
		{name: "token create needs group", args: []string{"token", "create"}, code: 1, stderr: "Error: --group is required: the group nodes enrolled with this token join (e.g. --group production)\n"},
		{name: "token create", args: []string{"token", "create", "--group", "staging", "--uses", "2"}, stdout: []string{" for group staging, expires ", ", 2 use(s)\n\nOn the node, run (NODE-ID: ", "\n\n  ferry-agent enroll --controller 127.0.0.1:", " --token ", " --ca-pin sha256:", " --node-id NODE-ID --state-dir /var/lib/ferry-agent\n  ferry-agent run --state-dir /var/lib/ferry-agent\n"}},
		{name: "token list", args: []string{"token", "list"}, stdout: []string{"ID      GROUP    USES  EXPIRES   ", "  staging  0/2   ", "  active  admin/admin\n"}},
		{name: "token revoke unknown", args: []string{"-o", "json", "token", "revoke", "nope"}, code: 1, stderr: "Error: token \"nope\": not found; list tokens with `ferryctl token list`\n"},
		{name: "package 10 MB", args: []string{"package", "apply", "-f", big}, code: 1, stderr: "Error: big.yaml: the file is 10485772 bytes, more than the 4194304 allowed; ship large content in the artifact instead\n"},
		{name: "package not UTF-8", args: []string{"package", "apply", "-f", latin1}, code: 1, stderr: "Error: latin1.yaml:3: byte 0xe9 at column 6 is not UTF-8 text; save the file as UTF-8 (iconv -t UTF-8), and put binary content in the artifact\n"},
		{name: "nodes", args: []string{"nodes"}, stdoutOnly: "NODE  GROUP  STATE  HEARTBEAT  VERSION  ADDRESS  LABELS  REASON\n"},
		{name: "nodes wide", args: []string{"-o", "wide", "nodes"}, stdoutOnly: "NODE  GROUP  STATE  HEARTBEAT  STREAM  GOSSIP  VERSION  ADDRESS  PLATFORM  PACKAGES  LABELS  REASON\n"},
		{name: "nodes yaml", args: []string{"-o", "yaml", "nodes"}, stdoutOnly: "{}\n"},
		{name: "nodes disk", args: []string{"nodes", "--disk"}, stdoutOnly: "NODE  FREE  SIZE  PATH  HOLDS\n"},
		{name: "nodes json", args: []string{"-o", "json", "nodes"}, stdoutOnly: "{}\n"},
		{name: "nodes bad output", args: []string{"-o", "xml", "nodes"}, code: 1, stderr: "Error: --output \"xml\" is not supported: use table, wide, json or yaml\n"},
		{name: "nodes bad package", args: []string{"nodes", "--package", "go@"}, code: 1, stderr: "Error: --package \"go@\": want NAME or NAME@VERSION, e.g. go or go@1.20.3\n"},
		{name: "nodes watch selector", args: []string{"nodes", "-w", "--selector", "dc=east"}, code: 1, stderr: "Error: --selector, --package and --not-package do not apply to --watch: watch a --group or --state\n"},
		{name: "node show unknown", args: []string{"node", "show", "nope"}, code: 1, stderr: "Error: node \"nope\": not found; list nodes with `ferryctl nodes --all`\n"},
		{name: "unknown nested", args: []string{"artifact", "ls"}, code: 1, stderr: "Error: unknown command \"ls\" for \"ferryctl artifact\"; did you mean 'ferryctl artifact gc', 'ferryctl artifact list' or 'ferryctl artifact rm'?\n"},
		{name: "unknown nested typo", args: []string{"token", "lst"}, code: 1, stderr: "Error: unknown command \"lst\" for \"ferryctl token\"; did you mean 'ferryctl token list'?\n"},
		{name: "unknown nested rm", args: []string{"node", "rm", "n1"}, code: 1, stderr: "Error: unknown command \"rm\" for \"ferryctl node\"; did you mean 'ferryctl node remove'?\n"},
		{name: "unknown nested none", args: []string{"gossip", "zzz"}, code: 1, stderr: "Error: unknown command \"zzz\" for \"ferryctl gossip\"; run 'ferryctl gossip --help' to list its commands\n"},
		{name: "unknown under runnable", args: []string{"rollout", "stauts", "x"}, code: 1, stderr: "Error: unknown command \"stauts\" for \"ferryctl rollout\"; did you mean 'ferryctl rollout status'?\n"},
		{name: "unknown root", args: []string{"nod"}, code: 1, stderr: "Error: unknown command \"nod\" for \"ferryctl\"; did you mean 'ferryctl node' or 'ferryctl nodes'?\n"},
		{name: "group alone", args: []string{"node"}, stdout: []string{"Available Commands:", "show "}},
		{name: "node remove unknown", args: []string{"node", "remove", "nope"}, code: 1, stderr: "Error: node \"nope\": not found; list nodes with `ferryctl nodes`\n"},
		{name: "rollout no nodes", args: []string{"rollout", "--group", "staging", "--package", "go@1.20.3", "--plan"}, code: 1, stderr: "Error: invalid rollout: no enrolled node matches group=staging; list nodes with `ferryctl nodes`\n"},
		{name: "rollout list", args: []string{"rollout", "list"}, stdoutOnly: "ROLLOUT  PACKAGE  KIND  TARGET  STATE  CREATED  BY\n"},
		{name: "rollout history", args: []string{"rollout", "history", "--package", "go"}, stdoutOnly: "ROLLOUT  PACKAGE  KIND  TARGET  STATE  CREATED  BY\n"},
		{name: "status unknown", args: []string{"rollout", "status", "nope"}, code: 1, stderr: notFound},
		{name: "promote unknown", args: []string{"rollout", "promote", "nope"}, code: 1, stderr: notFound},
		{name: "pause unknown", args: []string{"rollout", "pause", "nope"}, code: 1, stderr: notFound},
		{name: "resume unknown", args: []string{"rollout", "resume", "nope"}, code: 1, stderr: notFound},
		{name: "abort unknown", args: []string{"-o", "json", "rollout", "abort", "nope"}, code: 1, stderr: notFound},
		{name: "undo nothing", args: []string{"rollout", "undo", "--group", "staging", "--package", "go"}, code: 1, stderr: "Error: invalid rollout: no enrolled node matches group=staging; list nodes with `ferryctl nodes`\n"},
		{name: "audit", args: []string{"audit", "--limit", "2"}, stdout: []string{"TIME  ", "ACTOR        ACTION ", "admin/admin  rollout.undo ", "admin/admin  rollout.abort "}},
		{name: "undo two targets", args: []string{"rollout", "undo", "--group", "staging", "--package", "go", "--to-version", "1", "--to-rollout", "x"}, code: 1, stderr: "Error: use --to-version or --to-rollout, not both\n"},
		{name: "undo versioned package", args: []string{"rollout", "undo", "--group", "staging", "--package", "go@1.20.3"}, code: 1, stderr: "Error: --package go@1.20.3: name the package without a version; to go to a version use --to-version\n"},
		{name: "remove versioned", args: []string{"rollout", "--group", "staging", "--remove", "go@1.20.3"}, code: 1, stderr: "Error: --remove go@1.20.3: name the package without a version; a node removes whichever version it has\n"},
		{name: "remove and install", args: []string{"rollout", "--group", "staging", "--remove", "go", "--package", "go@1.20.3"}, code: 1, stderr: "Error: use --package NAME@VERSION to install or --remove NAME to remove, not both\n"},
		{name: "package rm bad ref", args: []string{"package", "rm", "go"}, code: 1, stderr: "Error: \"go\" is not a package reference: want NAME@VERSION, e.g. go@1.20.3\n"},
		{name: "gc nothing", args: []string{"artifact", "gc", "--plan"}, stdoutOnly: "nothing to remove: every artifact is referenced by a package or a rollout\n"},
		{name: "package rm", args: []string{"package", "rm", "go@1.20.3"}, stdoutOnly: "package go@1.20.3 removed; its artifact go1.20.3.linux-amd64.tar.gz stays until `ferryctl artifact gc` or `ferryctl artifact rm`\n"},
		{name: "package rm again", args: []string{"package", "rm", "go@1.20.3"}, code: 1, stderr: "Error: package not found: go@1.20.3; list packages with `ferryctl package list`\n"},
		{name: "gc plan", args: []string{"artifact", "gc", "--plan"}, stdout: []string{"would remove go1.20.3.linux-amd64.tar.gz@1.20.3 (sha256:", "plan only: 1 artifacts ("}},
		{name: "gc", args: []string{"artifact", "gc"}, stdout: []string{"removed go1.20.3.linux-amd64.tar.gz@1.20.3 (sha256:", "1 artifacts removed, "}},
		{name: "gc again", args: []string{"artifact", "gc"}, stdoutOnly: "nothing to remove: every artifact is referenced by a package or a rollout\n"},
		{name: "no credential", args: []string{"--config", filepath.Join(dir, "none.yaml"), "rollout", "pause", "x"}, code: 1, stderr: "Error: admin credential " + filepath.Join(dir, "none.yaml") + " does not exist; pass --config or set FERRY_CONFIG to the admin.yaml the controller wrote in its data dir\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, cfg, tc.args...)
			if code != tc.code || errOut != tc.stderr {
				t.Fatalf("exit %d, stderr %q; want exit %d, stderr %q", code, errOut, tc.code, tc.stderr)
			}
			if tc.stdoutOnly != "" && out != tc.stdoutOnly {
				t.Errorf("stdout %q, want %q", out, tc.stdoutOnly)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
		})
	}
}

// A plan that failed on a node exits 1 after showing it, so a script that
// plans first stops; a clean plan exits 0.
func TestPlanExit(t *testing.T) {
	ok := &ferryv1.NodePlan{NodeId: "n1", Note: "go: not installed -> 1.20.3; 1 of 1 steps would change", Steps: []*ferryv1.StepResult{{Name: "archive -> /usr/local/go", Changed: true}}}
	bad := &ferryv1.NodePlan{NodeId: "n2", Wave: 1, Failed: true, Note: "plan failed at sudoers deploy: rule 1: unknown user", Steps: []*ferryv1.StepResult{{Name: "sudoers deploy", Error: "rule 1: unknown user"}}}
	var out bytes.Buffer
	a := &app{stdout: &out}
	if err := a.printPlan([]*ferryv1.NodePlan{ok}); err != nil {
		t.Errorf("clean plan: %v", err)
	}
	out.Reset()
	err := a.printPlan([]*ferryv1.NodePlan{bad, ok})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 || ee.Err.Error() != "the plan failed on 1 of 2 nodes (n2); nothing was changed" {
		t.Errorf("failed plan: %v, want exit 1 naming n2", err)
	}
	if !strings.Contains(out.String(), "n2 (wave 1): plan failed at sudoers deploy") || !strings.Contains(out.String(), "  ! failed   sudoers deploy: rule 1: unknown user\n") {
		t.Errorf("failed plan output:\n%s", out.String())
	}
}
