package sudoers

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// oracle runs visudo -cf on sudoers text, for the tests that compare
// Ferry's checker with sudo's own parser.
type oracle struct {
	visudo  string
	version [3]int // major, minor, patch
	dir     string
	n       int
}

// newOracle returns the oracle, or skips the test where visudo is missing.
func newOracle(t *testing.T) *oracle {
	t.Helper()
	visudo, ok := VisudoPath()
	if !ok {
		t.Skip("visudo is not installed (apt-get install sudo): the comparison with sudo's parser is skipped; Ferry's own expectations run in the tests without visudo")
	}
	o := &oracle{visudo: visudo, dir: t.TempDir()}
	out, err := exec.Command(visudo, "-V").Output()
	if err != nil {
		t.Fatalf("%s -V: %v", visudo, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	if _, err := fmt.Sscanf(strings.TrimPrefix(first, "visudo version "), "%d.%d.%d", &o.version[0], &o.version[1], &o.version[2]); err != nil {
		t.Fatalf("cannot read the version in %q: %v", first, err)
	}
	return o
}

// check runs visudo -cf on text, ended by a newline as the install step
// writes it, and returns visudo's output and whether it accepted.
func (o *oracle) check(t *testing.T, text string) (string, bool) {
	t.Helper()
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	o.n++
	p := filepath.Join(o.dir, fmt.Sprintf("fragment%d", o.n))
	if err := os.WriteFile(p, []byte(text), 0o440); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(o.visudo, "-cf", p).CombinedOutput()
	return strings.TrimSpace(strings.ReplaceAll(string(out), p, "fragment")), err == nil
}

// knows reports whether the installed sudo is at least release since
// ("1.9.16"); "" is any 1.9.
func (o *oracle) knows(since string) bool {
	var v [3]int
	if since == "" {
		return true
	}
	if _, err := fmt.Sscanf(since, "%d.%d.%d", &v[0], &v[1], &v[2]); err != nil {
		panic(fmt.Sprintf("sudo release %q in the test table: %v", since, err))
	}
	for i := range v {
		if o.version[i] != v[i] {
			return o.version[i] > v[i]
		}
	}
	return true
}

// FuzzAcceptedByVisudo looks for text Ferry's checker accepts and visudo
// refuses, the direction that breaks sudo on a node without visudo. It
// needs visudo, and is slow (a visudo run per input): go test -fuzz
// FuzzAcceptedByVisudo -parallel 2.
func FuzzAcceptedByVisudo(f *testing.F) {
	for _, tc := range valid {
		f.Add(tc.text)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if Check(text) != nil {
			return
		}
		v := newOracle(t)
		if out, ok := v.check(t, text); !ok && !v.newerSetting(out) {
			t.Fatalf("Ferry accepts what visudo refuses: %q: %s", text, out)
		}
	})
}

// newerSetting reports whether visudo's refusal is of a Defaults setting
// that Ferry knows from a newer sudo than the installed one.
func (o *oracle) newerSetting(out string) bool {
	_, name, found := strings.Cut(out, `unknown defaults entry "`)
	name, _, _ = strings.Cut(name, `"`)
	s, ok := settings[name]
	return found && ok && !o.knows(s.since)
}
