package sudoers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// The checks CheckPolicy runs, in this order, as Checks.Ran names them.
const (
	CheckFerry          = "ferry checker"
	CheckVisudoFragment = "visudo -cf fragment"
	CheckVisudoPolicy   = "visudo -c whole policy"
)

const (
	mainSudoers = "/etc/sudoers"
	sudoersDir  = "/etc/sudoers.d"
)

// Fragment is a sudoers fragment as Ferry is about to install it.
type Fragment struct {
	Root    string // install root; "/" on a node ("" means "/")
	Name    string // file name in /etc/sudoers.d
	Content []byte // the file as it will be written, Ferry's header included
}

// Checks says which checks ran on a fragment, for the step log.
type Checks struct {
	// Ran names the checks that ran, in order. When CheckPolicy returns
	// an error, the last one is the check that refused.
	Ran []string
	// Visudo is the visudo that ran, "" when none is installed.
	Visudo string
	// Notes say what limited the checks: no visudo, no /etc/sudoers under
	// the root, a policy that does not read the fragment.
	Notes []string
}

func (c Checks) String() string {
	s := "sudoers checks: " + strings.Join(c.Ran, ", ")
	if len(c.Notes) > 0 {
		s += " (" + strings.Join(c.Notes, "; ") + ")"
	}
	return s
}

// CheckPolicy checks a fragment before it is installed at
// /etc/sudoers.d/<Name> under f.Root: Ferry's checker, then, when visudo is
// not "", visudo -cf on the fragment alone and visudo -c on a staged copy
// of the whole policy, /etc/sudoers and every file it includes, with the
// new fragment in place of the old. The copy lives in a temporary
// directory with its includes rewritten to point into it, so nothing on
// the node changes. That last check catches what a fragment cannot show on
// its own, such as an alias the main sudoers already defines.
//
// visudo is the path of visudo (see VisudoPath); "" runs Ferry's checker
// only, and Checks.Notes says so.
func CheckPolicy(ctx context.Context, visudo string, f Fragment) (Checks, error) {
	checks := Checks{Ran: []string{CheckFerry}, Visudo: visudo}
	if err := validFragmentName(f.Name); err != nil {
		return checks, err
	}
	if err := Check(string(f.Content)); err != nil {
		return checks, err
	}
	if visudo == "" {
		checks.Notes = append(checks.Notes, "visudo is not installed, so only Ferry's checker ran; install sudo's visudo for the visudo checks")
		return checks, nil
	}
	root := f.Root
	if root == "" {
		root = "/"
	}
	dir, err := os.MkdirTemp("", "ferry-sudoers-")
	if err != nil {
		return checks, fmt.Errorf("stage the sudo policy: %w", err)
	}
	defer func() { _ = os.RemoveAll(dir) }() // a temp copy; the check's verdict stands either way
	if strings.ContainsAny(dir, " \t\n\"%") {
		return checks, fmt.Errorf("stage the sudo policy: temporary directory %q has a blank, quote or %% that sudo's includes cannot name; set TMPDIR to a plain path", dir)
	}
	s := &stager{
		root:   root,
		dir:    filepath.Join(dir, "root"),
		target: path.Join(sudoersDir, f.Name),
		files:  map[string][]byte{},
		staged: map[string]bool{},
		read:   map[string][]byte{},
	}
	s.files[s.target] = f.Content
	offset := 0
	if isHeader(string(bytes.SplitN(f.Content, []byte("\n"), 2)[0])) {
		offset = 1
	}

	checks.Ran = append(checks.Ran, CheckVisudoFragment)
	frag, err := s.file(s.target)
	if err != nil {
		return checks, err
	}
	s.reached = false // staged for visudo -cf; the policy has yet to include it
	out, ok, err := runVisudo(ctx, visudo, "-c", "-f", frag)
	if err != nil {
		return checks, fmt.Errorf("run %s -cf on %s: %w", visudo, s.target, err)
	}
	if !ok {
		return checks, fmt.Errorf("visudo -cf refuses %s: %s; fix the rule it names", s.target, s.explain(out, offset))
	}

	checks.Ran = append(checks.Ran, CheckVisudoPolicy)
	if _, err := os.Stat(filepath.Join(root, mainSudoers)); errors.Is(err, fs.ErrNotExist) {
		s.files[mainSudoers] = []byte("#includedir " + sudoersDir + "\n")
		checks.Notes = append(checks.Notes, fmt.Sprintf("%s has no %s, so the staged policy is %s alone", root, mainSudoers, sudoersDir))
	}
	main, err := s.file(mainSudoers)
	if err != nil {
		return checks, err
	}
	if !s.reached {
		checks.Notes = append(checks.Notes, fmt.Sprintf("%s does not include %s, so sudo will not read the fragment", mainSudoers, s.target))
	}
	out, ok, err = runVisudo(ctx, visudo, "-c", "-f", main)
	if err != nil {
		return checks, fmt.Errorf("run %s -c on the staged policy: %w", visudo, err)
	}
	if !ok {
		return checks, fmt.Errorf("visudo -c refuses the whole sudo policy with the new %s in place, and a broken policy stops sudo on the node: %s; fix the rule it names, in the package or in the node's file it names", s.target, s.explain(out, offset))
	}
	return checks, nil
}

func validFragmentName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("sudoers fragment name %q must be a plain file name in %s", name, sudoersDir)
	}
	return nil
}

// stager copies a sudo policy from under root into dir, mirroring paths:
// the node's /etc/sudoers becomes dir/etc/sudoers. Includes in the copies
// point at the copies.
type stager struct {
	root    string            // install root the policy is read from
	dir     string            // where the copy goes
	target  string            // the fragment's path on the node
	files   map[string][]byte // content to stage instead of the root's file
	staged  map[string]bool   // node paths staged or being staged
	read    map[string][]byte // what was staged, by node path, before rewriting
	reached bool              // whether the policy includes target
}

// stagedPath is where the node file p goes in the copy.
// Node paths p are absolute and clean (expandInclude), so joined under the
// root or the staging dir they stay inside it.
func (s *stager) stagedPath(p string) string { return filepath.Join(s.dir, filepath.FromSlash(p)) }

// file stages the node file p, and the files it includes, and returns the
// staged path. A file missing from the root is left missing, for visudo
// to report as sudo would.
func (s *stager) file(p string) (string, error) {
	sp := s.stagedPath(p)
	if p == s.target {
		s.reached = true
	}
	if s.staged[p] {
		return sp, nil
	}
	s.staged[p] = true
	data, ok := s.files[p]
	if !ok {
		var err error
		data, err = os.ReadFile(filepath.Join(s.root, filepath.FromSlash(p))) //nolint:gosec // G703: p is absolute and clean, so it stays under the root.
		if errors.Is(err, fs.ErrNotExist) {
			return sp, nil
		}
		if err != nil {
			return "", fmt.Errorf("stage the sudo policy: read %s under %s: %w", p, s.root, err)
		}
	}
	s.read[p] = data
	out, err := s.rewrite(p, data)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(sp), 0o700); err != nil {
		return "", fmt.Errorf("stage the sudo policy: %w", err)
	}
	if err := os.WriteFile(sp, out, 0o440); err != nil { //nolint:gosec // G703: sp is stagedPath of an absolute, clean path.
		return "", fmt.Errorf("stage the sudo policy: %w", err)
	}
	return sp, nil
}

// includeRe matches an include line: #include or #includedir at the start
// of a line, @include or @includedir after optional blanks, then blanks
// and the path. Sudo needs the blanks, except before a quoted @include path.
var includeRe = regexp.MustCompile(`^(#include(?:dir)?|[ \t]*@include(?:dir)?)([ \t]*)(.*)$`)

// rewrite points the includes in the node file p at their staged copies,
// staging them on the way.
func (s *stager) rewrite(p string, data []byte) ([]byte, error) {
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		m := includeRe.FindStringSubmatch(strings.TrimSuffix(line, "\r"))
		if m == nil {
			continue
		}
		keyword, blanks, arg := strings.TrimSpace(m[1]), m[2], m[3]
		if blanks == "" && (keyword[0] == '#' || !strings.HasPrefix(arg, `"`)) {
			continue // a comment, or a word that starts like an include
		}
		arg, rest := includeArg(arg)
		if arg == "" {
			continue // visudo reports the missing path
		}
		inc := expandInclude(arg, path.Dir(p))
		var staged string
		var err error
		if strings.HasSuffix(keyword, "dir") {
			staged, err = s.includeDir(inc)
		} else {
			staged, err = s.file(inc)
		}
		if err != nil {
			return nil, err
		}
		lines[i] = keyword + " " + staged + rest
	}
	return []byte(strings.Join(lines, "\n")), nil
}

// includeDir stages the files sudo reads from the node directory d, and
// the fragment when d is its directory, and returns the staged directory.
// Like sudo, it skips names with a '.' or ending in '~', and anything
// that is not a regular file.
func (s *stager) includeDir(d string) (string, error) {
	sd := s.stagedPath(d)
	names := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(d)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("stage the sudo policy: read %s under %s: %w", d, s.root, err)
	}
	for _, e := range entries {
		n := e.Name()
		if strings.Contains(n, ".") || strings.HasSuffix(n, "~") {
			continue
		}
		st, err := os.Stat(filepath.Join(s.root, filepath.FromSlash(d), n)) //nolint:gosec // G703: d is absolute and clean, n a directory entry.
		if err == nil && st.Mode().IsRegular() {
			names[n] = true
		}
	}
	if path.Dir(s.target) == path.Clean(d) {
		names[path.Base(s.target)] = true
	}
	if err := os.MkdirAll(sd, 0o700); err != nil {
		return "", fmt.Errorf("stage the sudo policy: %w", err)
	}
	for n := range names {
		if _, err := s.file(path.Join(d, n)); err != nil {
			return "", err
		}
	}
	return sd, nil
}

// includeArg splits the rest of an include line into its path, without
// quotes, and what follows the path.
func includeArg(s string) (string, string) {
	if strings.HasPrefix(s, `"`) {
		if end := strings.IndexByte(s[1:], '"'); end >= 0 {
			return s[1 : end+1], s[end+2:]
		}
		return "", s
	}
	end := strings.IndexAny(s, " \t")
	if end < 0 {
		return s, ""
	}
	return s[:end], s[end:]
}

// expandInclude resolves an include path as sudo does: %h becomes the
// short host name, and a relative path is relative to the directory of
// the file that includes it.
func expandInclude(p, dir string) string {
	if strings.Contains(p, "%h") {
		host, _ := os.Hostname()
		host, _, _ = strings.Cut(host, ".")
		p = strings.ReplaceAll(p, "%h", host)
	}
	if !path.IsAbs(p) {
		p = path.Join(dir, p)
	}
	return path.Clean(p)
}

// explain turns visudo's output about staged files into one about the
// node's: staged paths become node paths, a position in the fragment
// becomes a line of the package's rules (Ferry's header not counted), and
// the caret lines under an echoed rule go.
func (s *stager) explain(out string, offset int) string {
	frag := regexp.MustCompile(regexp.QuoteMeta(s.target) + `:(\d+):(\d+):`)
	var kept, warnings []string
	for _, l := range strings.Split(strings.ReplaceAll(out, s.dir, ""), "\n") {
		l = strings.TrimRight(l, " \t")
		switch {
		case strings.Trim(l, " \t^~") == "":
			continue
		case strings.HasPrefix(l, "Warning: "):
			warnings = append(warnings, l)
			continue
		}
		kept = append(kept, frag.ReplaceAllStringFunc(l, func(m string) string {
			n := frag.FindStringSubmatch(m)
			line, _ := strconv.Atoi(n[1])
			return fmt.Sprintf("%s rule line %d, column %s:", s.target, line-offset, n[2])
		}))
	}
	if len(kept) == 0 {
		kept = warnings
	}
	msg := strings.Join(kept, "; ")
	if m := redefinedRe.FindStringSubmatch(msg); m != nil {
		if where := s.aliasDefinitions(m[1]); len(where) > 1 {
			msg += " (" + m[1] + " is defined at " + strings.Join(where, " and ") + ")"
		}
	}
	return msg
}

// redefinedRe matches visudo's complaint about an alias defined twice.
var redefinedRe = regexp.MustCompile(`Alias "([A-Z][A-Z0-9_]*)" already defined`)

// aliasDefinitions lists where the staged files define the alias name,
// as "path line N", so a clash names both places.
func (s *stager) aliasDefinitions(name string) []string {
	def := regexp.MustCompile(`^[ \t]*(User|Host|Runas|Cmnd|Cmd)_Alias[ \t].*\b` + name + `[ \t]*=`)
	var where []string
	paths := make([]string, 0, len(s.read))
	for p := range s.read {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		offset := 0
		if p == s.target && isHeader(strings.SplitN(string(s.read[p]), "\n", 2)[0]) {
			offset = 1
		}
		for i, l := range strings.Split(string(s.read[p]), "\n") {
			if def.MatchString(l) {
				if p == s.target {
					where = append(where, fmt.Sprintf("%s rule line %d", p, i+1-offset))
				} else {
					where = append(where, fmt.Sprintf("%s line %d", p, i+1))
				}
			}
		}
	}
	return where
}
