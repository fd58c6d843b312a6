package sudoers

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const header = "# Managed by Ferry (package app). Local changes are overwritten.\n"

// writeRoot lays out files (node path → content) under a new install root.
func writeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o440); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// snapshot reads every file under root, to show CheckPolicy changed none.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func visudoForTest(t *testing.T) string {
	t.Helper()
	visudo, ok := VisudoPath()
	if !ok {
		t.Skip("visudo is not installed (apt-get install sudo): the whole-policy check cannot run; TestCheckPolicyWithoutVisudo covers the checker alone")
	}
	return visudo
}

var allChecks = []string{CheckFerry, CheckVisudoFragment, CheckVisudoPolicy}

func TestCheckPolicyWithoutVisudo(t *testing.T) {
	root := writeRoot(t, nil)
	checks, err := CheckPolicy(context.Background(), "", Fragment{Root: root, Name: "app", Content: []byte(header + "deploy ALL=(root) NOPASSWD: /usr/bin/id\n")})
	if err != nil {
		t.Fatalf("CheckPolicy: %v", err)
	}
	if !slices.Equal(checks.Ran, []string{CheckFerry}) || checks.Visudo != "" {
		t.Errorf("checks %+v, want Ferry's checker only", checks)
	}
	if s := checks.String(); !strings.Contains(s, "ferry checker") || !strings.Contains(s, "visudo is not installed") {
		t.Errorf("step log line %q does not say visudo is missing", s)
	}

	// The checker still refuses what visudo would, with rule line numbers.
	for _, rules := range []string{"deploy ALL=(root) NOPASSWD: /usr/bin/id\ndeploy ALL=(root) NOPASSWD: /opt/x \\\n", "deploy ALL=(root) NOPASSWD: /usr/bin/id\nDefaults bogus_option_xyz\n"} {
		checks, err := CheckPolicy(context.Background(), "", Fragment{Root: root, Name: "app", Content: []byte(header + rules)})
		if err == nil || !strings.Contains(err.Error(), "sudoers line 2:") {
			t.Errorf("CheckPolicy(%q) = %v, want a refusal of rule line 2", rules, err)
		}
		if !slices.Equal(checks.Ran, []string{CheckFerry}) {
			t.Errorf("checks %v, want Ferry's checker only", checks.Ran)
		}
	}
}

func TestCheckPolicyRefusesBadNames(t *testing.T) {
	for _, name := range []string{"", ".", "..", "../sudoers", "a/b"} {
		if _, err := CheckPolicy(context.Background(), "", Fragment{Root: t.TempDir(), Name: name, Content: []byte("deploy ALL=ALL\n")}); err == nil {
			t.Errorf("CheckPolicy accepted fragment name %q", name)
		}
	}
}

// TestCheckPolicyAliasRedefinition is the case a fragment cannot show on
// its own: it passes Ferry's checker and visudo -cf, but redefines an alias
// the main sudoers defines, so visudo -c of the whole policy fails and sudo
// would stop working on the node.
func TestCheckPolicyAliasRedefinition(t *testing.T) {
	visudo := visudoForTest(t)
	root := writeRoot(t, map[string]string{
		"/etc/sudoers":        "root ALL=(ALL:ALL) ALL\nUser_Alias ADMINS = alice\nADMINS ALL=(ALL) ALL\n@includedir /etc/sudoers.d\n",
		"/etc/sudoers.d/app":  header + "deploy ALL=(root) NOPASSWD: /usr/bin/id\n",
		"/etc/sudoers.d/misc": "bob ALL=(root) /usr/bin/uptime\n",
	})
	before := snapshot(t, root)
	frag := header + "User_Alias ADMINS = bob\nADMINS ALL=(root) NOPASSWD: /usr/bin/systemctl restart app\n"
	if err := Check(frag); err != nil {
		t.Fatalf("Ferry's checker refuses the fragment on its own: %v", err)
	}
	checks, err := CheckPolicy(context.Background(), visudo, Fragment{Root: root, Name: "app", Content: []byte(frag)})
	if err == nil {
		t.Fatal("CheckPolicy accepted a fragment that redefines the main sudoers' ADMINS")
	}
	if !slices.Equal(checks.Ran, allChecks) || checks.Visudo != visudo {
		t.Errorf("checks %+v, want all three with %s", checks, visudo)
	}
	for _, want := range []string{"visudo -c refuses the whole sudo policy", `Alias "ADMINS" already defined`, "/etc/sudoers line 2", "/etc/sudoers.d/app rule line 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), os.TempDir()) {
		t.Errorf("error %q names the staging directory instead of the node's files", err)
	}
	if after := snapshot(t, root); !maps.Equal(before, after) {
		t.Errorf("CheckPolicy changed the install root")
	}

	// Without the redefinition the same policy passes, with the new
	// fragment in place of the old.
	checks, err = CheckPolicy(context.Background(), visudo, Fragment{Root: root, Name: "app", Content: []byte(header + "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart app\n")})
	if err != nil || !slices.Equal(checks.Ran, allChecks) || len(checks.Notes) != 0 {
		t.Errorf("CheckPolicy = %+v, %v; want all three checks passed, no notes", checks, err)
	}
}

func TestCheckPolicyStagesWhatSudoReads(t *testing.T) {
	visudo := visudoForTest(t)
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	files := map[string]string{
		"/etc/sudoers": "root ALL=(ALL:ALL) ALL\n" +
			"#includedir /etc/sudoers.d\n" +
			"@include sudoers.local\n" + // relative to /etc
			"@include \"/etc/sudoers.%h\"\n",
		"/etc/sudoers.local":             "#include /etc/sudoers.nested\n",
		"/etc/sudoers.nested":            "carol ALL=(root) /usr/bin/id\n",
		"/etc/sudoers." + host:           "dave ALL=(root) /usr/bin/id\n",
		"/etc/sudoers.d/app":             "this old fragment is broken and is replaced\n",
		"/etc/sudoers.d/README.disabled": "sudo skips names with a dot, broken or not\n",
		"/etc/sudoers.d/app~":            "and names ending in ~\n",
	}
	root := writeRoot(t, files)
	ok := []byte(header + "deploy ALL=(root) NOPASSWD: /usr/bin/id\n")
	if checks, err := CheckPolicy(context.Background(), visudo, Fragment{Root: root, Name: "app", Content: ok}); err != nil {
		t.Fatalf("CheckPolicy = %+v, %v; want the staged policy to pass", checks, err)
	}

	// Each included file counts: break one at a time.
	for _, p := range []string{"/etc/sudoers.nested", "/etc/sudoers." + host, "/etc/sudoers.local"} {
		t.Run(p, func(t *testing.T) {
			broken := map[string]string{}
			for k, v := range files {
				broken[k] = v
			}
			broken[p] += "carol ALL = relative/command\n"
			root := writeRoot(t, broken)
			checks, err := CheckPolicy(context.Background(), visudo, Fragment{Root: root, Name: "app", Content: ok})
			if err == nil || checks.Ran[len(checks.Ran)-1] != CheckVisudoPolicy {
				t.Fatalf("CheckPolicy = %+v, %v; want the whole-policy check to refuse the broken %s", checks, err, p)
			}
			if !strings.Contains(err.Error(), p+":") {
				t.Errorf("error %q does not name %s", err, p)
			}
		})
	}
}

func TestCheckPolicyNotes(t *testing.T) {
	visudo := visudoForTest(t)
	frag := Fragment{Name: "app", Content: []byte(header + "deploy ALL=(root) NOPASSWD: /usr/bin/id\n")}

	// No /etc/sudoers under the root (a test root): sudoers.d alone.
	frag.Root = writeRoot(t, map[string]string{"/etc/sudoers.d/other": "bob ALL=(root) /usr/bin/id\n"})
	checks, err := CheckPolicy(context.Background(), visudo, frag)
	if err != nil || !slices.Equal(checks.Ran, allChecks) || !strings.Contains(strings.Join(checks.Notes, ";"), "has no /etc/sudoers") {
		t.Errorf("no main sudoers: CheckPolicy = %+v, %v", checks, err)
	}
	frag.Root = writeRoot(t, map[string]string{"/etc/sudoers.d/other": "User_Alias ADMINS = bob\n"})
	frag.Content = []byte(header + "User_Alias ADMINS = carol\n")
	if _, err := CheckPolicy(context.Background(), visudo, frag); err == nil || !strings.Contains(err.Error(), "/etc/sudoers.d/other") {
		t.Errorf("no main sudoers: CheckPolicy = %v, want the clash with /etc/sudoers.d/other", err)
	}

	// A main sudoers that does not read /etc/sudoers.d.
	frag.Root = writeRoot(t, map[string]string{"/etc/sudoers": "root ALL=(ALL:ALL) ALL\n"})
	frag.Content = []byte(header + "deploy ALL=(root) NOPASSWD: /usr/bin/id\n")
	checks, err = CheckPolicy(context.Background(), visudo, frag)
	if err != nil || !strings.Contains(checks.String(), "sudo will not read the fragment") {
		t.Errorf("no includedir: CheckPolicy = %q, %v", checks, err)
	}
}

// TestCheckPolicyExplainsVisudo runs a stand-in visudo that refuses with
// the message sudo 1.9.13 prints, to check how the message is put to the
// operator: node paths, and the fragment's lines counted from its rules.
func TestCheckPolicyExplainsVisudo(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "visudo")
	script := "#!/bin/sh\n# the last argument is the file\nfor f; do :; done\necho \"$f:2:12: expected a fully-qualified path name\"\necho 'deploy ALL=bin/ls'\necho '           ^~~~~~'\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	checks, err := CheckPolicy(context.Background(), fake, Fragment{Root: t.TempDir(), Name: "app", Content: []byte(header + "deploy ALL=/usr/bin/id\ndeploy ALL=/usr/bin/id\n")})
	if err == nil {
		t.Fatal("CheckPolicy accepted what visudo refused")
	}
	if !slices.Equal(checks.Ran, []string{CheckFerry, CheckVisudoFragment}) {
		t.Errorf("checks ran %v, want the fragment check to be the one refusing", checks.Ran)
	}
	want := "visudo -cf refuses /etc/sudoers.d/app: /etc/sudoers.d/app rule line 1, column 12: expected a fully-qualified path name; deploy ALL=bin/ls; fix the rule it names"
	if err.Error() != want {
		t.Errorf("error\n %q\nwant\n %q", err, want)
	}
}

func TestVisudoPathOffPath(t *testing.T) {
	installed := ""
	for _, d := range visudoDirs {
		if st, err := os.Stat(filepath.Join(d, "visudo")); err == nil && st.Mode()&0o111 != 0 {
			installed = filepath.Join(d, "visudo")
			break
		}
	}
	t.Setenv("PATH", t.TempDir())
	got, ok := VisudoPath()
	if ok != (installed != "") || got != installed {
		t.Errorf("VisudoPath() with an empty PATH = %q, %v; want %q", got, ok, installed)
	}
}
