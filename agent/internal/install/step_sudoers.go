package install

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sudoers"
)

// sudoersKind writes /etc/sudoers.d/<name>, 0440 root:root, only after it
// validates: Ferry's own checker always, visudo -cf where visudo exists.
// An invalid fragment fails the step and leaves the old file untouched.
type sudoersKind struct{ managedFile }

func (sudoersKind) Describe(s *ferryv1.Step) string { return "sudoers " + s.GetSudoers().GetName() }

func (sudoersKind) Validate(r validateRequest) error {
	s := r.step.GetSudoers()
	if err := validateSudoersName(s.GetName()); err != nil {
		return err
	}
	return sudoers.Check(string(renderSudoers(r.job.Package.GetName(), s)))
}

// wantSudoersFile is the fragment a sudoers step wants.
func wantSudoersFile(i *Installer, r stepRequest) (wantFile, error) {
	s := r.step.GetSudoers()
	if err := validateSudoersName(s.GetName()); err != nil {
		return wantFile{}, err
	}
	label := "/etc/sudoers.d/" + s.GetName()
	target, err := i.resolve(label)
	if err != nil {
		return wantFile{}, err
	}
	data := renderSudoers(r.job.pkg.GetName(), s)
	if err := sudoers.Check(string(data)); err != nil {
		return wantFile{}, err
	}
	uid, gid := 0, 0
	if os.Geteuid() != 0 {
		uid, gid = -1, -1 // only root can hand files to root; the agent runs as root
	}
	return wantFile{
		label: label, target: target, data: data, mode: 0o440, uid: uid, gid: gid, dirMode: 0o750,
		validate: i.visudoCheck,
	}, nil
}

func (i *Installer) visudoCheck(p string) error {
	if i.visudo == "" {
		return nil
	}
	if err := os.Chmod(p, 0o440); err != nil {
		return err
	}
	out, err := exec.Command(i.visudo, "-cf", p).CombinedOutput()
	if err != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(string(out)), p, "fragment")
		return fmt.Errorf("visudo -cf refuses the fragment: %s", msg)
	}
	return nil
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
