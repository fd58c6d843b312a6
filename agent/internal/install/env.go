package install

import (
	"fmt"
	"regexp"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$`)
	envVarRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	pkgNameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$`)
)

// Variables a profile.d file must not set: PATH has its own field, the
// others are read-only in common shells or change how every later line
// of every login script is parsed.
var reservedVars = map[string]bool{
	"PATH": true, "IFS": true, "PWD": true, "OLDPWD": true, "PPID": true,
	"UID": true, "EUID": true, "SHELLOPTS": true, "BASHOPTS": true,
	"PS4": true, "ENV": true, "BASH_ENV": true, "HOME": true, "SHELL": true,
}

// shellQuote quotes s for POSIX sh: inside single quotes nothing is
// special, and a single quote is written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func validateEnv(s *ferryv1.EnvStep) error {
	if !fileNameRE.MatchString(s.GetName()) {
		return fmt.Errorf("env name %q: use letters, digits, '_' and '-' (it becomes /etc/profile.d/NAME.sh)", s.GetName())
	}
	seen := map[string]bool{}
	for _, v := range s.GetVars() {
		switch {
		case !envVarRE.MatchString(v.GetName()):
			return fmt.Errorf("env %s: variable name %q is not a shell identifier (letters, digits, '_', not starting with a digit)", s.GetName(), v.GetName())
		case reservedVars[v.GetName()]:
			if v.GetName() == "PATH" {
				return fmt.Errorf("env %s: set PATH additions with the step's path list, not as a variable", s.GetName())
			}
			return fmt.Errorf("env %s: refusing to set %s from a profile script", s.GetName(), v.GetName())
		case seen[v.GetName()]:
			return fmt.Errorf("env %s: variable %s is set twice", s.GetName(), v.GetName())
		case strings.IndexByte(v.GetValue(), 0) >= 0:
			return fmt.Errorf("env %s: value of %s contains a NUL byte, which no environment can hold", s.GetName(), v.GetName())
		}
		seen[v.GetName()] = true
	}
	for _, p := range s.GetPath() {
		switch {
		case !strings.HasPrefix(p, "/"):
			return fmt.Errorf("env %s: PATH entry %q must be an absolute directory", s.GetName(), p)
		case strings.ContainsAny(p, ":\x00\n"):
			return fmt.Errorf("env %s: PATH entry %q contains ':', a newline or NUL", s.GetName(), p)
		}
	}
	return nil
}

// renderEnv writes the profile script. mapPath rewrites values that are
// absolute paths (identity for the real file; see checkEnv).
func renderEnv(pkg string, s *ferryv1.EnvStep, mapPath func(string) string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Managed by Ferry (package %s). Local changes are overwritten.\n", pkg)
	for _, v := range s.GetVars() {
		fmt.Fprintf(&b, "export %s=%s\n", v.GetName(), shellQuote(mapPath(v.GetValue())))
	}
	// Prepend in reverse so the first entry listed ends up first; skip
	// entries already present so sourcing twice changes nothing.
	paths := s.GetPath()
	for j := len(paths) - 1; j >= 0; j-- {
		q := shellQuote(mapPath(paths[j]))
		fmt.Fprintf(&b, "case \":${PATH}:\" in *:%s:*) ;; *) PATH=%s\"${PATH:+:$PATH}\" ;; esac\n", q, q)
	}
	if len(paths) > 0 {
		b.WriteString("export PATH\n")
	}
	return []byte(b.String())
}

func renderSudoers(pkg string, s *ferryv1.SudoersStep) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Managed by Ferry (package %s). Local changes are overwritten.\n", pkg)
	for _, r := range s.GetRules() {
		b.WriteString(r)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

func validateSudoersName(name string) error {
	switch {
	case strings.Contains(name, "."):
		return fmt.Errorf("sudoers name %q contains '.', so sudo would silently ignore the file; drop the dot", name)
	case strings.HasSuffix(name, "~"):
		return fmt.Errorf("sudoers name %q ends in '~', so sudo would silently ignore the file", name)
	case !fileNameRE.MatchString(name):
		return fmt.Errorf("sudoers name %q: use letters, digits, '_' and '-'", name)
	}
	return nil
}
