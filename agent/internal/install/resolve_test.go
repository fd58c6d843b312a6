package install

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// lay creates, under root, directories ("d/"), files ("f": "content") and
// symbolic links ("l": "->target").
func lay(t *testing.T, root string, tree map[string]string) {
	t.Helper()
	for p, c := range tree {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(p, "/"):
			err = os.MkdirAll(full, 0o755)
		case strings.HasPrefix(c, "->"):
			err = os.Symlink(c[2:], full)
		default:
			err = os.WriteFile(full, []byte(c), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolvePathFollowsLinksUnderTheRoot(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name string
		tree map[string]string
		path string
		want string // the resolved node path, or the error's text
		fail bool
	}{
		{"no links", map[string]string{"etc/": ""}, "/etc/app/conf", "/etc/app/conf", false},
		{"relative link", map[string]string{"etc/sudoers.d/": "", "opt/linkin": "->../etc"}, "/opt/linkin/sudoers.d", "/etc/sudoers.d", false},
		{"absolute link, read under the root", map[string]string{"etc/": "", "opt/abs": "->/etc"}, "/opt/abs/cron.d", "/etc/cron.d", false},
		{"absolute link spelled as a host path in the root", nil, "/opt/host/x", "/srv/x", false},
		{"chain of links", map[string]string{"srv/real/": "", "opt/a": "->b", "opt/b": "->/opt/c", "opt/c": "->../srv/real"}, "/opt/a/f", "/srv/real/f", false},
		{"dot dot never climbs above the root", map[string]string{"etc/": "", "opt/up": "->../../../../../etc"}, "/opt/up/x", "/etc/x", false},
		{"link into a missing directory", map[string]string{"opt/new": "->../srv/none/deeper"}, "/opt/new/x", "/srv/none/deeper/x", false},
		{"last component is not followed", map[string]string{"etc/": "", "etc/f": "->/etc/shadow"}, "/etc/f", "/etc/f", false},
		{"missing parents are taken as named", nil, "/opt/app/bin/tool", "/opt/app/bin/tool", false},
		{"loop", map[string]string{"opt/a": "->b", "opt/b": "->a"}, "/opt/a/x", "too many levels of symbolic links", true},
		{"link to itself", map[string]string{"opt/self": "->self"}, "/opt/self/x", "a loop?", true},
		{"file on the way", map[string]string{"etc/passwd": "root:x:0:0"}, "/etc/passwd/x", "/etc/passwd is not a directory", true},
		{"link out of the root", map[string]string{"opt/out": "->" + outside}, "/opt/out/x", "leaves the install root", true},
		{"link to profile.d elsewhere", map[string]string{"opt/prof/": "", "etc/profile.d": "->../opt/prof"}, "/etc/profile.d/app.sh", "Ferry writes /etc/profile.d only where it is named", true},
		{"sudoers.d through a link", map[string]string{"srv/s/": "", "etc": "->srv"}, "/etc/sudoers.d/app", "only where it is named", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			lay(t, e.root, tt.tree)
			if tt.name == "absolute link spelled as a host path in the root" {
				lay(t, e.root, map[string]string{"srv/": "", "opt/host": "->" + e.path("srv")})
			}
			r, err := e.inst.resolvePath(tt.path)
			if tt.fail {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("resolvePath(%s) = %v, %v; want an error mentioning %q", tt.path, r, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolvePath(%s): %v", tt.path, err)
			}
			if r.node != tt.want || r.host != e.path(tt.want) {
				t.Errorf("resolvePath(%s) = %s (%s), want %s", tt.path, r.node, r.host, tt.want)
			}
		})
	}
	t.Run("loop is ELOOP", func(t *testing.T) {
		e := newEnv(t)
		lay(t, e.root, map[string]string{"opt/a": "->b", "opt/b": "->/opt/a"})
		if _, err := e.inst.resolvePath("/opt/a/x"); !errors.Is(err, unix.ELOOP) {
			t.Errorf("err = %v, want ELOOP", err)
		}
	})
}

// TestOpenParentCatchesAReplacedDirectory: a directory on the way that is
// replaced by a symbolic link between the check and the write is caught.
func TestOpenParentCatchesAReplacedDirectory(t *testing.T) {
	e := newEnv(t)
	lay(t, e.root, map[string]string{"opt/app/": "", "etc/sudoers.d/": ""})
	r, err := e.inst.resolvePath("/opt/app/sudoers.d")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(e.path("opt/app"), e.path("opt/app-moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../etc", e.path("opt/app")); err != nil {
		t.Fatal(err)
	}
	dir, err := e.inst.openParent(r.host, 0)
	if err == nil {
		dir.Close()
		t.Fatal("openParent followed the new symbolic link")
	}
	if !strings.Contains(err.Error(), "changed while the step ran: it now resolves to /etc/sudoers.d") {
		t.Errorf("error %q", err)
	}
}

// newEnvWithState is a test node whose state directory is at state under
// its install root.
func newEnvWithState(t *testing.T, state string) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, state: filepath.Join(root, state)}
	if err := os.MkdirAll(e.state, 0o700); err != nil {
		t.Fatal(err)
	}
	e.inst = e.open()
	return e
}

// nodeSnapshot is snapshot of the install root's top-level entries but
// the one holding the state directory, where every job leaves its result.
func nodeSnapshot(t *testing.T, e *env) string {
	rel, _ := filepath.Rel(e.root, e.state)
	top := strings.Split(rel, "/")[0]
	ents, _ := os.ReadDir(e.root)
	var b strings.Builder
	for _, ent := range ents {
		if ent.Name() != top {
			b.WriteString(ent.Name() + ":\n" + snapshot(t, e.path(ent.Name())))
		}
	}
	return b.String()
}

// TestInstallRefusesWhatPathsResolveTo: paths that pass by name (as
// ferryctl package apply checks them) but lead somewhere the policy
// refuses are refused on the node, and nothing there changes.
func TestInstallRefusesWhatPathsResolveTo(t *testing.T) {
	tests := []struct {
		name string
		tree map[string]string
		step *ferryv1.Step
		want string
	}{
		{"archive into sudoers.d", map[string]string{"etc/sudoers.d/keep": "x", "opt/linkin": "->../etc"},
			archiveStep("/opt/linkin/sudoers.d", 0), "archive dest /opt/linkin/sudoers.d resolves to /etc/sudoers.d through a symbolic link: /etc/sudoers.d is a system directory"},
		{"archive into the state dir", map[string]string{"opt/st": "->/srv/ferry-state"},
			archiveStep("/opt/st/install", 0), "agent's state directory /srv/ferry-state"},
		{"archive over the state dir", map[string]string{"opt/st": "->../srv"},
			archiveStep("/opt/st/ferry-state", 0), "/srv/ferry-state is in the agent's state directory"},
		{"archive into cron.d", map[string]string{"etc/cron.d/keep": "x", "opt/c": "->/etc"},
			archiveStep("/opt/c/cron.d", 0), "belongs to cron"},
		{"archive into /proc", map[string]string{"opt/p": "->.."},
			archiveStep("/opt/p/proc/sys", 0), "in /proc"},
		{"archive into /dev/shm", map[string]string{"opt/shm": "->../dev/shm"},
			archiveStep("/opt/shm/app", 0), "in /dev"},
		{"file into the state dir", map[string]string{"opt/st": "->../srv/ferry-state"},
			fileStep("/opt/st/identity.key", "x", 0), "agent's state directory"},
		{"file into sudoers.d", map[string]string{"etc/sudoers.d/": "", "opt/s": "->/etc/sudoers.d"},
			fileStep("/opt/s/deploy", "deploy ALL=(ALL) NOPASSWD: ALL\n", 0), "use a sudoers step"},
		{"file into profile.d", map[string]string{"etc/profile.d/": "", "opt/p": "->../etc/profile.d"},
			fileStep("/opt/p/evil.sh", "x", 0), "use an env step"},
		{"file onto authorized_keys", map[string]string{"root/.ssh/": "", "opt/keys": "->/root/.ssh"},
			fileStep("/opt/keys/authorized_keys", "ssh-ed25519 AAAA", 0), "allow_sensitive: true"},
		{"file onto shadow", map[string]string{"etc/": "", "opt/e": "->../etc"},
			fileStep("/opt/e/shadow", "root::0:0:::::", 0), "password hashes"},
		{"file onto the sudoers.d directory", map[string]string{"etc/": "", "opt/e": "->../etc"},
			fileStep("/opt/e/sudoers.d", "x", 0), "use a sudoers step"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWithState(t, "srv/ferry-state")
			lay(t, e.root, tc.tree)
			before := nodeSnapshot(t, e)
			e.installRefused(tc.step, tc.want)
			if after := nodeSnapshot(t, e); after != before {
				t.Errorf("a refused job changed the node:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestInstallRefusesByNameToo: the agent applies the policy to the path
// as named as well, for packages no apply-time check has seen.
func TestInstallRefusesByNameToo(t *testing.T) {
	for _, tc := range []struct {
		step *ferryv1.Step
		want string
	}{
		{archiveStep("/var/lib/ferry-agent", 0), "agent's state directory"},
		{archiveStep("/etc/cron.d", 0), "belongs to cron"},
		{archiveStep("/dev/shm/x", 0), "in /dev"},
		{fileStep("/etc/sudoers.d", "x", 0), "use a sudoers step"},
		{fileStep("/etc/shadow", "x", 0), "password hashes"},
		{fileStep("/etc/ld.so.preload", "/tmp/x.so", 0), "every program"},
		{fileStep("/root/.ssh/authorized_keys", "x", 0), "over SSH"},
		{fileStep("/etc/ssh/ssh_host_ed25519_key", "x", 0), "identity"},
		{fileStep("/etc/security/opasswd", "x", 0), "password hashes"},
	} {
		t.Run(describeStep(tc.step), func(t *testing.T) {
			e := newEnv(t)
			e.installRefused(tc.step, tc.want)
			if ents, _ := os.ReadDir(e.root); len(ents) != 0 {
				t.Errorf("a refused job changed the root: %v", ents)
			}
		})
	}
}

func describeStep(s *ferryv1.Step) string {
	if a := s.GetArchive(); a != nil {
		return "archive " + a.GetDest()
	}
	return "file " + s.GetFile().GetPath()
}

func TestAllowSensitive(t *testing.T) {
	e := newEnv(t)
	lay(t, e.root, map[string]string{"root/.ssh/": "", "opt/keys": "->/root/.ssh"})
	step := &ferryv1.Step{Kind: &ferryv1.Step_File{File: &ferryv1.FileStep{
		Path: "/opt/keys/authorized_keys", Content: []byte("ssh-ed25519 AAAA deploy\n"), AllowSensitive: true,
	}}}
	wantPhase(t, e.install(pkg("keys", "1", "", step), ""), succeeded)
	p := e.path("root/.ssh/authorized_keys")
	if got := readFile(t, p); got != "ssh-ed25519 AAAA deploy\n" {
		t.Errorf("%s = %q", p, got)
	}
	if st, err := os.Lstat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v (%v), want 0600", p, st.Mode(), err)
	}
	if st, err := os.Lstat(e.path("opt/keys")); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link on the way was replaced: %v, %v", st.Mode(), err)
	}
	// allow_sensitive does not open the kinds' own directories.
	step.GetFile().Path = "/etc/sudoers.d/x"
	u := e.install(pkg("keys", "2", "", step), "")
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "use a sudoers step") {
		t.Errorf("message %q", u.GetMessage())
	}
}

func TestFileModeDefaultsTo0600(t *testing.T) {
	e := newEnv(t)
	wantPhase(t, e.install(pkg("app", "1", "", fileStep("/etc/app/secret", "token", 0), fileStep("/etc/app/public", "x", 0o644)), ""), succeeded)
	for p, want := range map[string]os.FileMode{"etc/app/secret": 0o600, "etc/app/public": 0o644} {
		st, err := os.Stat(e.path(p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", p, st.Mode().Perm(), want)
		}
	}
}

// TestArchiveParentReplacedWhileExtracting: dest's directory replaced
// between the check and the switch (by a symbolic link to /etc, or by
// another directory) fails the job and switches nothing in.
func TestArchiveParentReplacedWhileExtracting(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replace func(e *env) error
		want    string
	}{
		{"by a symbolic link", func(e *env) error { return os.Symlink("../etc", e.path("opt/app")) }, "changed while the step ran: it now resolves to /etc/current"},
		{"by another directory", func(e *env) error { return os.Mkdir(e.path("opt/app"), 0o755) }, "was replaced while the archive was extracted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			lay(t, e.root, map[string]string{"opt/app/": "", "etc/keep": "x"})
			a, d := artifact(t, map[string]string{"bin/tool": "#!/bin/sh\n"})
			e.inst.hook = func(p string) {
				if p != "archive:extracted" {
					return
				}
				if err := os.Rename(e.path("opt/app"), e.path("opt/app-moved")); err != nil {
					t.Error(err)
				}
				if err := tc.replace(e); err != nil {
					t.Error(err)
				}
			}
			u := e.install(pkg("app", "1", d, archiveStep("/opt/app/current", 0)), a)
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), tc.want) {
				t.Errorf("message %q, want it to mention %q", u.GetMessage(), tc.want)
			}
			assertAbsent(t, e.path("etc/current"))
			assertAbsent(t, e.path("opt/app-moved/current"))
			if got := readFile(t, e.path("etc/keep")); got != "x" {
				t.Errorf("/etc/keep = %q", got)
			}
		})
	}
}

// TestFileWrittenInTheDirectoryThatWasChecked: once the directory is
// open, a swap of its path for a symbolic link does not redirect the
// write.
func TestFileWrittenInTheDirectoryThatWasChecked(t *testing.T) {
	e := newEnv(t)
	lay(t, e.root, map[string]string{"etc/app/": "", "victim/": ""})
	e.inst.hook = func(p string) {
		if p != "file:prepared" {
			return
		}
		if err := os.Rename(e.path("etc/app"), e.path("etc/app-moved")); err != nil {
			t.Error(err)
		}
		if err := os.Symlink("../victim", e.path("etc/app")); err != nil {
			t.Error(err)
		}
	}
	e.install(pkg("app", "1", "", fileStep("/etc/app/conf", "x", 0)), "")
	assertAbsent(t, e.path("victim/conf"))
	if got := readFile(t, e.path("etc/app-moved/conf")); got != "x" {
		t.Errorf("conf = %q", got)
	}
}

// TestEnvRefusesPolicyNames: every name installpolicy refuses is refused
// by the agent too, before anything is written.
func TestEnvRefusesPolicyNames(t *testing.T) {
	e := newEnv(t)
	names := []string{"PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS",
		"CDPATH", "GLOBIGNORE", "BASH_FUNC_x", "LD_PRELOAD", "LD_AUDIT", "HOME", "SHELL", "UID", "EUID", "PPID", "PWD", "OLDPWD"}
	for _, n := range installpolicy.RefusedVars() {
		if n != "PATH" {
			names = append(names, strings.Replace(n, "*", "_X", 1))
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			u := e.install(pkg("x", "1", "", envStep("x", nil, "A", "b", name, "v")), "")
			wantPhase(t, u, failed)
			if !strings.Contains(u.GetMessage(), "refusing to set "+name) || !strings.Contains(u.GetMessage(), installpolicy.EnvVar(name).Problem) {
				t.Errorf("message %q", u.GetMessage())
			}
		})
	}
	if ents, _ := os.ReadDir(e.root); len(ents) != 0 {
		t.Errorf("refused env steps changed the root: %v", ents)
	}
}
