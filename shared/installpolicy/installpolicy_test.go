package installpolicy

import (
	"strings"
	"testing"
)

func TestArchiveDest(t *testing.T) {
	tests := []struct {
		dest, stateDir string
		want           string // "" when allowed
	}{
		{"/usr/local/go", "", ""},
		{"/opt/app", "", ""},
		{"/opt/app/current", "/srv/ferry", ""},
		{"/etc/myapp", "", ""},
		{"/", "", "system directory"},
		{"/opt", "", "system directory"},
		{"/usr/local", "", "system directory"},
		{"/var/lib", "", "system directory"},
		{"/etc/sudoers.d", "", "system directory"},
		{"/etc/profile.d", "", "system directory"},
		{"/etc/ferry", "", "system directory"},
		{"/etc/sudoers.d/app", "", "only the sudoers step writes"},
		{"/etc/profile.d/app", "", "only the env step writes"},
		{"/etc/cron.d", "", "belongs to cron"},
		{"/etc/cron.daily", "", "belongs to cron"},
		{"/etc/crontab", "", "belongs to cron"},
		{"/var/spool/cron/crontabs", "", "belongs to cron"},
		{"/proc/sys/kernel", "", "in /proc, which the kernel provides"},
		{"/sys/fs", "", "in /sys"},
		{"/dev/shm/app", "", "in /dev"},
		{"/var/lib/ferry-agent", "", "agent's state directory /var/lib/ferry-agent"},
		{"/var/lib/ferry-agent/install", "", "agent's state directory"},
		{"/srv/ferry", "/srv/ferry", "agent's state directory /srv/ferry"},
		{"/srv/ferry/x", "/srv/ferry", "agent's state directory /srv/ferry"},
		{"/srv", "/srv/ferry/state", "system directory"},
		{"/srv/ferry", "/srv/ferry/state", "contains the agent's state directory /srv/ferry/state"},
		{"/srv/ferry2", "/srv/ferry", ""},
	}
	for _, tt := range tests {
		t.Run(tt.dest, func(t *testing.T) {
			checkRefusal(t, ArchiveDest(tt.dest, tt.stateDir), tt.want)
		})
	}
}

func TestFilePath(t *testing.T) {
	tests := []struct {
		path string
		want string // "" when allowed
		// sensitive: allowed with allow_sensitive
		sensitive bool
	}{
		{"/etc/myapp/config", "", false},
		{"/usr/local/bin/tool", "", false},
		{"/home/deploy/.profile", "", false},
		{"/etc/ssh/ssh_config", "", false},
		{"/.autorelabel", "", false},
		{"/", "/ is a directory", false},
		{"/etc/sudoers", "use a sudoers step", false},
		{"/etc/sudoers.d", "use a sudoers step", false},
		{"/etc/sudoers.d/app", "use a sudoers step", false},
		{"/etc/profile.d", "use an env step", false},
		{"/etc/profile.d/app.sh", "use an env step", false},
		{"/usr/local/bin", "system directory, not a file", false},
		{"/opt", "system directory, not a file", false},
		{"/proc/sys/kernel/core_pattern", "in /proc", false},
		{"/sys/kernel/x", "in /sys", false},
		{"/dev/shm/x", "in /dev", false},
		{"/var/lib/ferry-agent/identity/node.key", "agent's state directory", false},
		{"/etc/shadow", "password hashes", true},
		{"/etc/shadow-", "password hashes", true},
		{"/etc/gshadow", "password hashes", true},
		{"/etc/passwd", "accounts", true},
		{"/etc/group", "accounts", true},
		{"/etc/security/opasswd", "password hashes", true},
		{"/root/.ssh/authorized_keys", "log in over SSH", true},
		{"/root/.ssh/id_ed25519", "log in over SSH", true},
		{"/home/deploy/.ssh/authorized_keys", "log in over SSH", true},
		{"/home/deploy/.ssh/authorized_keys2", "log in over SSH", true},
		{"/etc/ssh/ssh_host_ed25519_key", "identity", true},
		{"/etc/ssh/sshd_config", "log in over SSH", true},
		{"/etc/ssh/sshd_config.d/ferry.conf", "log in over SSH", true},
		{"/etc/ld.so.preload", "every program", true},
		{"/etc/ld.so.conf.d/app.conf", "every program", true},
		{"/etc/pam.d/sshd", "authenticated", true},
		{"/etc/ssl/private/app.key", "private keys", true},
		{"/etc/cron.d/backup", "cron", true},
		{"/etc/crontab", "cron", true},
		{"/var/spool/cron/crontabs/root", "cron", true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			checkRefusal(t, FilePath(tt.path, "", false), tt.want)
			r := FilePath(tt.path, "", true)
			switch {
			case tt.sensitive && r != nil:
				t.Errorf("with allow_sensitive: refused: %v", r)
			case !tt.sensitive && tt.want != "" && r == nil:
				t.Errorf("with allow_sensitive: allowed, want it refused (%q)", tt.want)
			}
			if tt.sensitive {
				checkRefusal(t, FilePath(tt.path, "", false), "allow_sensitive: true")
			}
		})
	}
	t.Run("actual state dir", func(t *testing.T) {
		checkRefusal(t, FilePath("/srv/ferry/identity/node.key", "/srv/ferry", true), "agent's state directory /srv/ferry")
		checkRefusal(t, FilePath("/srv/ferry-other", "/srv/ferry", false), "")
	})
}

func TestEnvVar(t *testing.T) {
	refused := []string{
		"PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT", "RPROMPT",
		"BASH_ENV", "ENV", "ZDOTDIR", "IFS", "SHELLOPTS", "BASHOPTS", "CDPATH", "GLOBIGNORE", "POSIXLY_CORRECT",
		"BASH_FUNC_ls%%", "BASH_FUNC_x", "BASH_XTRACEFD", "BASH_COMPAT",
		"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT",
		"HOME", "SHELL", "UID", "EUID", "PPID", "PWD", "OLDPWD", "PATH",
	}
	for _, name := range refused {
		t.Run(name, func(t *testing.T) {
			r := EnvVar(name)
			if r == nil {
				t.Fatal("allowed")
			}
			if name != "PATH" && !strings.Contains(r.Problem, name) {
				t.Errorf("problem %q does not name %s", r.Problem, name)
			}
		})
	}
	if r := EnvVar("PATH"); r == nil || r.Fix != "use env.path to add directories" {
		t.Errorf("PATH: %v, want the fix to point to env.path", r)
	}
	for _, name := range []string{"GOROOT", "GOFLAGS", "JAVA_HOME", "LANG", "HOMEBREW", "MY_PS1", "OLD_LD_PATH", "SHELL_NAME", "PATHS"} {
		if r := EnvVar(name); r != nil {
			t.Errorf("%s refused: %v", name, r)
		}
	}
}

func TestRefusedVarsCoversEnvVar(t *testing.T) {
	for _, n := range RefusedVars() {
		name := strings.TrimSuffix(n, "*")
		if EnvVar(name) == nil {
			t.Errorf("RefusedVars lists %s, which EnvVar allows", n)
		}
	}
}

func checkRefusal(t *testing.T, r *Refusal, want string) {
	t.Helper()
	switch {
	case want == "" && r != nil:
		t.Errorf("refused: %v", r)
	case want != "" && r == nil:
		t.Errorf("allowed, want a refusal mentioning %q", want)
	case want != "" && !strings.Contains(r.Error(), want):
		t.Errorf("refusal %q, want it to mention %q", r.Error(), want)
	}
}
