package sudoers

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// visudoDirs are where distributions install visudo, for an agent whose
// PATH leaves out the sbin directories.
var visudoDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"}

// VisudoPath returns the visudo to run and whether there is one: the one
// on PATH, else the first in the usual sbin directories.
func VisudoPath() (string, bool) {
	if p, err := exec.LookPath("visudo"); err == nil {
		return p, true
	}
	for _, d := range visudoDirs {
		p := filepath.Join(d, "visudo")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// runVisudo runs visudo with args in the C locale and returns its output
// without the "parsed OK" lines, and whether it accepted.
func runVisudo(ctx context.Context, visudo string, args ...string) (string, bool, error) {
	cmd := exec.CommandContext(ctx, visudo, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	var kept []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasSuffix(l, ": parsed OK") {
			kept = append(kept, l)
		}
	}
	msg := strings.TrimSpace(strings.Join(kept, "\n"))
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) || ctx.Err() != nil {
		return msg, false, err // visudo did not run, or ran out of time
	}
	return msg, err == nil, nil
}
