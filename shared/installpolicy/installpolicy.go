// Package installpolicy is the one list of what an install step may not
// touch on a node. Two sides apply it, so it lives here:
//
//   - ferryctl package apply (the controller's pkgspec) checks every path
//     and variable name as written, so a package that no node would
//     install is refused at once, with its file and line;
//   - the agent checks the same lists again after resolving every symbolic
//     link under its install root, because only the node knows where
//     /opt/link/sudoers.d really leads.
//
// Paths are node paths: absolute and clean, as seen from the install root
// (the agent strips --root before asking). The lists are:
//
//   - places no step writes: /proc, /sys, /dev and the agent's state
//     directory; for archive steps also cron's files and directories;
//   - system directories, which an archive step would replace wholesale
//     and which are directories, not files, for a file step;
//   - /etc/profile.d, /etc/sudoers.d and /etc/sudoers, which only the env
//     and sudoers kinds write (they quote and validate what they write);
//   - credential files (accounts, SSH keys and logins, the loader's
//     preload list, PAM, private keys, cron tables), which a file step
//     writes only when the package says allow_sensitive: true;
//   - environment variable names an env step may not set, because they
//     make a shell that sources the file run code or parse differently.
package installpolicy

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// DefaultStateDir is the agent's state directory when --state-dir does
// not say otherwise. Both sides refuse it by name; the agent also refuses
// its actual state directory.
const DefaultStateDir = "/var/lib/ferry-agent"

// A Refusal says why a step may not do something and what to do instead.
type Refusal struct {
	Problem string
	Fix     string
}

func (r *Refusal) Error() string { return r.Problem + "; " + r.Fix }

// Within reports whether the clean path p is dir or inside it.
func Within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// kernelDirs are file systems the kernel provides; nothing is installed
// there.
var kernelDirs = []string{"/proc", "/sys", "/dev"}

// offLimits says why no step may write at p. stateDir is the agent's
// state directory as a node path ("" when only the default is known);
// tree is set for a step that replaces p as a whole, which must not
// contain the state directory either.
func offLimits(p, stateDir string, tree bool) *Refusal {
	for _, d := range kernelDirs {
		if Within(p, d) {
			return &Refusal{
				Problem: fmt.Sprintf("%s is in %s, which the kernel provides", p, d),
				Fix:     "install into a directory of its own, e.g. /opt/NAME",
			}
		}
	}
	for _, d := range []string{DefaultStateDir, stateDir} {
		switch {
		case d == "":
		case Within(p, d):
			return &Refusal{
				Problem: fmt.Sprintf("%s is in the agent's state directory %s (its identity, records and backups)", p, d),
				Fix:     "install somewhere else, e.g. /opt/NAME",
			}
		case tree && Within(d, p):
			return &Refusal{
				Problem: fmt.Sprintf("%s contains the agent's state directory %s, which replacing it would destroy", p, d),
				Fix:     "extract into a directory of its own, e.g. /opt/NAME",
			}
		}
	}
	return nil
}

// systemDirs are directories an archive step must never replace
// wholesale, besides "/" and every top-level directory.
var systemDirs = []string{
	"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec",
	"/usr/include", "/usr/share", "/usr/src", "/usr/local",
	"/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/lib64",
	"/usr/local/libexec", "/usr/local/include", "/usr/local/share", "/usr/local/etc", "/usr/local/src",
	"/usr/lib/systemd",
	"/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/tmp", "/var/run", "/var/mail", "/var/opt",
	"/etc/profile.d", "/etc/sudoers.d", "/etc/systemd", "/etc/ssh", "/etc/ssl", "/etc/pam.d", "/etc/security",
	"/etc/default", "/etc/init.d", "/etc/ld.so.conf.d", "/etc/sysctl.d", "/etc/modprobe.d", "/etc/udev",
	"/etc/logrotate.d", "/etc/alternatives", "/etc/apt", "/etc/ferry",
}

// topLevelDirs are the top-level directories of a Linux system; an
// archive step refuses any top-level dest, these or not.
var topLevelDirs = []string{
	"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
	"/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
}

// IsSystemDir reports directories an archive step must never replace
// wholesale: "/", every top-level directory and the list above.
func IsSystemDir(p string) bool {
	return strings.Count(p, "/") == 1 || slices.Contains(systemDirs, p)
}

// isSystemDirName reports the system directories by name, for file
// steps: a top-level file such as /.autorelabel is no directory.
func isSystemDirName(p string) bool {
	return p == "/" || slices.Contains(topLevelDirs, p) || slices.Contains(systemDirs, p)
}

// isCron reports cron's own files and directories: cron runs what they
// say, as root.
func isCron(p string) bool {
	return strings.HasPrefix(p, "/etc/cron") || p == "/etc/anacrontab" || Within(p, "/var/spool/cron")
}

// ArchiveDest says why an archive step may not extract into dest; nil
// when it may. stateDir is as for FilePath.
func ArchiveDest(dest, stateDir string) *Refusal {
	const own = "extract into a directory of its own, e.g. /usr/local/NAME or /opt/NAME"
	if IsSystemDir(dest) {
		return &Refusal{Problem: fmt.Sprintf("%s is a system directory; the archive step replaces dest as a whole", dest), Fix: own}
	}
	if r := offLimits(dest, stateDir, true); r != nil {
		return r
	}
	switch {
	case isCron(dest):
		return &Refusal{Problem: fmt.Sprintf("%s belongs to cron, which runs what it finds there as root", dest), Fix: own}
	case Within(dest, "/etc/profile.d"), Within(dest, "/etc/sudoers.d"):
		return &Refusal{Problem: fmt.Sprintf("%s is inside %s, which only the %s step writes", dest, path.Dir(dest), managedBy(dest)), Fix: own}
	}
	return nil
}

// managedBy names the kind that alone writes in dir's tree.
func managedBy(p string) string {
	if Within(p, "/etc/profile.d") {
		return "env"
	}
	return "sudoers"
}

// sensitive lists credential files and what they decide: a file step
// writes them only with allow_sensitive.
var sensitive = []struct {
	match func(p string) bool
	what  string
}{
	{func(p string) bool {
		switch strings.TrimSuffix(p, "-") { // "-": the shadow utilities' backups
		case "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow":
			return true
		}
		return p == "/etc/security/opasswd"
	}, "holds the node's accounts or password hashes"},
	{func(p string) bool {
		b := path.Base(p)
		return b == "authorized_keys" || b == "authorized_keys2" || Within(p, "/root/.ssh") ||
			strings.HasPrefix(p, "/etc/ssh/ssh_host_") || Within(p, "/etc/ssh/sshd_config") || Within(p, "/etc/ssh/sshd_config.d")
	}, "decides who can log in over SSH, or proves the node's identity"},
	{func(p string) bool {
		return p == "/etc/ld.so.preload" || p == "/etc/ld.so.conf" || Within(p, "/etc/ld.so.conf.d")
	}, "changes what every program on the node loads"},
	{func(p string) bool { return Within(p, "/etc/pam.d") }, "decides how logins are authenticated"},
	{func(p string) bool { return Within(p, "/etc/ssl/private") || p == "/etc/krb5.keytab" }, "holds private keys"},
	{isCron, "is read by cron, which runs what it says as root"},
}

// FilePath says why a file step may not write p; nil when it may.
// stateDir is the agent's state directory as a node path ("" where it is
// not known: at apply time, or when it is outside the install root).
// allowSensitive is the step's allow_sensitive.
func FilePath(p, stateDir string, allowSensitive bool) *Refusal {
	if r := offLimits(p, stateDir, false); r != nil {
		return r
	}
	switch {
	case p == "/":
		return &Refusal{Problem: "/ is a directory", Fix: "name the file to write"}
	case p == "/etc/sudoers" || Within(p, "/etc/sudoers.d"):
		return &Refusal{Problem: "sudoers files cannot be written with a file step", Fix: "use a sudoers step, which validates the rules before writing them"}
	case Within(p, "/etc/profile.d"):
		return &Refusal{Problem: "files in /etc/profile.d cannot be written with a file step (every login shell runs them)", Fix: "use an env step, which quotes every value it writes"}
	case isSystemDirName(p):
		return &Refusal{Problem: fmt.Sprintf("%s is a system directory, not a file", p), Fix: "name the file to write inside it"}
	}
	if allowSensitive {
		return nil
	}
	for _, s := range sensitive {
		if s.match(p) {
			return &Refusal{
				Problem: fmt.Sprintf("%s %s", p, s.what),
				Fix:     "set allow_sensitive: true on the step if the package really must write it",
			}
		}
	}
	return nil
}

// PathVar is the one refused variable with a field of its own: env steps
// add to PATH with their path list.
const PathVar = "PATH"

// refusedVars are the variables an env file may not set, by why.
var refusedVars = map[string]string{
	PathVar: "path",

	// Expanded or run by interactive shells at every prompt (bash's
	// promptvars runs command substitutions in PS1, zsh's prompt_subst).
	"PROMPT_COMMAND": "prompt", "PS0": "prompt", "PS1": "prompt", "PS2": "prompt", "PS3": "prompt", "PS4": "prompt",
	"PROMPT": "prompt", "RPROMPT": "prompt", "RPS1": "prompt", "RPS2": "prompt",
	// Name files that shells read and run at startup.
	"ENV": "startup", "ZDOTDIR": "startup",
	// Change how every later line is split, globbed or parsed.
	"IFS": "parse", "SHELLOPTS": "parse", "CDPATH": "parse", "GLOBIGNORE": "parse", "POSIXLY_CORRECT": "parse",
	// Set by the login or the shell itself; several are read-only.
	"HOME": "owned", "SHELL": "owned", "UID": "owned", "EUID": "owned", "PPID": "owned", "PWD": "owned", "OLDPWD": "owned",
}

// refusedPrefixes are families of refused variables.
var refusedPrefixes = []struct{ prefix, why string }{
	// BASH_ENV, BASH_FUNC_*, BASHOPTS, BASH_XTRACEFD, BASH_COMPAT, ...
	{"BASH", "bash"},
	// LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...
	{"LD_", "loader"},
}

var varProblems = map[string]string{
	"path":    "PATH cannot be set directly",
	"prompt":  "%s is expanded or run by interactive shells at every prompt, so it would run code from a file that only sets values",
	"startup": "%s names a file that shells read and run when they start",
	"parse":   "%s changes how shells split, glob or parse every later line",
	"owned":   "%s is set by the login or the shell itself",
	"bash":    "%s is one of bash's own variables (names starting with BASH, such as BASH_ENV and BASH_FUNC_*), which make bash run code or change how it behaves",
	"loader":  "%s makes the dynamic loader load code into every program (names starting with LD_)",
}

// EnvVar says why an env step may not set the variable name; nil when it
// may. PATH's refusal points to the path list (callers may word it their
// own way: see PathVar).
func EnvVar(name string) *Refusal {
	why, ok := refusedVars[name]
	if !ok {
		for _, p := range refusedPrefixes {
			if strings.HasPrefix(name, p.prefix) {
				why, ok = p.why, true
				break
			}
		}
	}
	switch {
	case !ok:
		return nil
	case why == "path":
		return &Refusal{Problem: varProblems[why], Fix: "use env.path to add directories"}
	}
	return &Refusal{
		Problem: fmt.Sprintf(varProblems[why], name),
		Fix:     "remove it: an env file only exports plain values, and Ferry refuses names that make sourcing it do more",
	}
}

// RefusedVars lists the refused variable names and, with a trailing "*",
// prefixes, sorted; docs and tests use it.
func RefusedVars() []string {
	var names []string
	for n := range refusedVars {
		names = append(names, n)
	}
	for _, p := range refusedPrefixes {
		names = append(names, p.prefix+"*")
	}
	slices.Sort(names)
	return names
}
