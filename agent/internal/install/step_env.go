package install

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// envKind writes /etc/profile.d/<name>.sh (exported variables, PATH
// additions), 0644, atomically, with every value single-quoted so nothing
// in it expands when the file is sourced, and refuses the variable names
// installpolicy lists, which would make a shell sourcing the file run
// code (PROMPT_COMMAND, PS1, BASH_ENV, LD_PRELOAD, ...) or parse later
// lines differently (IFS, SHELLOPTS, ...). Later checks source it.
type envKind struct{ managedFile }

func (envKind) Describe(s *ferryv1.Step) string { return "env " + s.GetEnv().GetName() }

func (envKind) Validate(r validateRequest) error { return validateEnv(r.step.GetEnv()) }

// wantEnvFile is the profile script an env step wants.
func wantEnvFile(i *Installer, r stepRequest) (wantFile, error) {
	s := r.step.GetEnv()
	label := profilePath(s)
	target, err := i.resolve(label)
	if err != nil {
		return wantFile{}, err
	}
	return wantFile{
		label: label, target: target, data: renderEnv(r.job.pkg.GetName(), s, func(v string) string { return v }),
		mode: 0o644, uid: -1, gid: -1, dirMode: 0o755,
		validate: i.shellSyntax,
	}, nil
}

func (envKind) Profile(pkg string, s *ferryv1.Step, mapPath func(string) string) (string, []byte) {
	return profilePath(s.GetEnv()), renderEnv(pkg, s.GetEnv(), mapPath)
}

func profilePath(s *ferryv1.EnvStep) string { return "/etc/profile.d/" + s.GetName() + ".sh" }

// shellSyntax runs sh -n on a script.
func (i *Installer) shellSyntax(_ context.Context, p string) (string, error) {
	out, err := exec.Command(i.shell, "-n", p).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("generated profile script fails sh -n: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return "", nil
}

var envVarRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

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
		if !envVarRE.MatchString(v.GetName()) {
			return fmt.Errorf("env %s: variable name %q is not a shell identifier (letters, digits, '_', not starting with a digit)", s.GetName(), v.GetName())
		}
		if r := installpolicy.EnvVar(v.GetName()); r != nil {
			if v.GetName() == installpolicy.PathVar {
				return fmt.Errorf("env %s: set PATH additions with the step's path list, not as a variable", s.GetName())
			}
			return fmt.Errorf("env %s: refusing to set %s from a profile script: %s; %s", s.GetName(), v.GetName(), r.Problem, r.Fix)
		}
		switch {
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
