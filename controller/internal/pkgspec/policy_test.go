package pkgspec

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// refusalAt parses src, which must fail with exactly one problem, and
// checks its line, field and that it is the policy's refusal.
func refusalAt(t *testing.T, src string, line int, field string, want *installpolicy.Refusal) {
	t.Helper()
	_, err := Parse("p.yaml", []byte(src))
	if err == nil {
		t.Fatalf("Parse accepted:\n%s", src)
	}
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("want one problem, got %v", err)
	}
	got := list[0]
	wantErr := fmt.Sprintf("p.yaml:%d: %s: %s", line, field, want.Error())
	if got.Error() != wantErr {
		t.Errorf("got  %s\nwant %s", got, wantErr)
	}
}

// TestApplyRefusesPolicyPaths: every path the install policy refuses by
// name is refused by package apply, at its file and line.
func TestApplyRefusesPolicyPaths(t *testing.T) {
	archiveDests := []string{
		"/var/lib/ferry-agent", "/var/lib/ferry-agent/install", "/etc/cron.d", "/etc/cron.hourly", "/etc/crontab",
		"/proc/sys", "/sys/fs/cgroup", "/dev/shm/app", "/etc/sudoers.d", "/etc/profile.d",
		"/etc/sudoers.d/app", "/etc/profile.d/app", "/usr/local", "/var/lib", "/etc/ferry",
	}
	for _, dest := range archiveDests {
		t.Run("archive "+dest, func(t *testing.T) {
			src := base + "  - archive: {dest: " + dest + "}\n"
			refusalAt(t, src, 5, "steps[0].archive.dest", installpolicy.ArchiveDest(dest, ""))
		})
	}
	always := []string{
		"/etc/sudoers", "/etc/sudoers.d", "/etc/sudoers.d/app", "/etc/profile.d", "/etc/profile.d/app.sh",
		"/proc/sys/kernel/core_pattern", "/sys/kernel/uevent_helper", "/dev/shm/x",
		"/var/lib/ferry-agent/identity/node.key", "/usr/local/bin", "/",
	}
	sensitive := []string{
		"/etc/shadow", "/etc/gshadow", "/etc/passwd", "/etc/group", "/etc/shadow-",
		"/root/.ssh/authorized_keys", "/root/.ssh/id_rsa", "/home/deploy/.ssh/authorized_keys",
		"/etc/ld.so.preload", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/sshd_config",
		"/etc/security/opasswd", "/etc/pam.d/sshd", "/etc/cron.d/backup", "/etc/crontab",
	}
	fileSrc := func(p, extra string) string {
		return "name: x\nversion: 1\nsteps:\n  - file:\n      content: x\n" + extra + "      path: " + p + "\n"
	}
	for _, p := range append(always, sensitive...) {
		t.Run("file "+p, func(t *testing.T) {
			refusalAt(t, fileSrc(p, ""), 6, "steps[0].file.path", installpolicy.FilePath(p, "", false))
		})
	}
	for _, p := range always {
		t.Run("file "+p+" with allow_sensitive", func(t *testing.T) {
			refusalAt(t, fileSrc(p, "      allow_sensitive: true\n"), 7, "steps[0].file.path", installpolicy.FilePath(p, "", true))
		})
	}
	for _, p := range sensitive {
		t.Run("file "+p+" with allow_sensitive", func(t *testing.T) {
			pkg, err := Parse("p.yaml", []byte(fileSrc(p, "      allow_sensitive: true\n")))
			if err != nil {
				t.Fatalf("refused with allow_sensitive: %v", err)
			}
			if !pkg.Steps[0].GetFile().GetAllowSensitive() {
				t.Error("allow_sensitive not carried into the step")
			}
		})
	}
	t.Run("allow_sensitive is a boolean", func(t *testing.T) {
		_, err := Parse("p.yaml", []byte(fileSrc("/etc/shadow", "      allow_sensitive: yes\n")))
		checkErrors(t, "p.yaml", err, []wantErr{
			{6, "steps[0].file.allow_sensitive", "expected true or false"},
			{7, "steps[0].file.path", "password hashes"},
		})
	})
	t.Run("a symlinked dest passes by name", func(t *testing.T) {
		// Only the node knows that /opt/linkin leads to /etc; the agent
		// refuses it there (see the agent's install tests).
		if _, err := Parse("p.yaml", []byte(base+"  - archive: {dest: /opt/linkin/sudoers.d}\n")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestApplyRefusesPolicyEnvNames: every variable name the install policy
// refuses is refused by package apply, at the name's line.
func TestApplyRefusesPolicyEnvNames(t *testing.T) {
	names := []string{
		"PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS",
		"CDPATH", "GLOBIGNORE", "BASH_FUNC_x", "LD_PRELOAD", "LD_LIBRARY_PATH", "HOME", "SHELL", "UID", "EUID",
		"PPID", "PWD", "OLDPWD", "PATH",
	}
	for _, n := range installpolicy.RefusedVars() {
		names = append(names, strings.Replace(n, "*", "_X", 1))
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			src := "name: x\nversion: 1\nsteps:\n  - env:\n      name: x\n      vars:\n        A: b\n        " + name + ": v\n"
			want := installpolicy.EnvVar(name)
			if want == nil {
				t.Fatalf("the policy allows %s", name)
			}
			refusalAt(t, src, 8, "steps[0].env.vars."+name, want)
		})
	}
	if _, err := Parse("p.yaml", []byte("name: x\nversion: 1\nsteps:\n  - env: {name: x, vars: {GOROOT: /usr/local/go, MY_PS1: x, LDFLAGS: -s}}\n")); err != nil {
		t.Errorf("ordinary names refused: %v", err)
	}
}

// TestContentDigestFileModeDefault: a file step with no mode is the same
// content as one with the default written out or left zero in code.
func TestContentDigestFileModeDefault(t *testing.T) {
	const step = "name: x\nversion: 1\nsteps:\n  - file: {path: /etc/x, content: x%s}\n"
	want := parseDigest(t, "none.yaml", []byte(fmt.Sprintf(step, "")))
	if got := parseDigest(t, "0600.yaml", []byte(fmt.Sprintf(step, `, mode: "0600"`))); got != want {
		t.Errorf("mode 0600 written out digests differently from the default")
	}
	p, err := Parse("none.yaml", []byte(fmt.Sprintf(step, "")))
	if err != nil {
		t.Fatal(err)
	}
	p.Steps[0].GetFile().Mode = 0
	if got := ContentDigest(p); got != want {
		t.Errorf("mode left zero digests differently from the default")
	}
	if got := parseDigest(t, "0644.yaml", []byte(fmt.Sprintf(step, `, mode: "0644"`))); got == want {
		t.Errorf("mode 0644 digests like the 0600 default")
	}
}
