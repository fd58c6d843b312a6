// Package pkgspec parses and validates Ferry package files: YAML install
// recipes (name, version, artifact reference, ordered steps) turned into
// ferryv1.Package values. Every problem is reported with the file, line and
// field it concerns and what to do about it; see docs/packages.md for the
// schema.
package pkgspec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Limits and defaults of the package format.
const (
	// MaxFileSize bounds a package file.
	MaxFileSize = 4 << 20
	// MaxContentSize bounds a file step's content; bigger files belong in
	// the artifact.
	MaxContentSize = 1 << 20
	// MaxSteps bounds the number of steps in a package.
	MaxSteps = 100
	// MaxKeepPrevious bounds archive.keep_previous: every kept version is a
	// full copy of the tree on the node's disk.
	MaxKeepPrevious = 10
	// MaxCheckTimeout bounds check.timeout so a hung check cannot hold a
	// node's install forever.
	MaxCheckTimeout = time.Hour

	DefaultKeepPrevious = 1
	DefaultFileMode     = 0o644
	DefaultCheckTimeout = 30 * time.Second

	// maxErrors bounds how many problems one Parse reports.
	maxErrors = 50
)

// ArtifactResolver finds the artifact a package refers to. The reference is
// as written in the file: "name@version", "name" (the latest pushed under
// that name) or "sha256:<hex prefix>".
type ArtifactResolver interface {
	ResolveArtifact(ref string) (*ferryv1.Artifact, error)
}

// Parse validates a package file and returns the package with its artifact
// unresolved: Artifact.Name holds the reference as written, Digest and Size
// are empty, and ContentDigest is not set. Source holds data. Defaults are
// filled in (archive.keep_previous 1, file.mode 0644, check.timeout 30s).
//
// On failure the error is an ErrorList with every problem found (up to 50),
// in file order.
func Parse(filename string, data []byte) (*ferryv1.Package, error) {
	pkg, _, err := parse(filename, data)
	return pkg, err
}

// ParseAndResolve parses a package file, resolves its artifact reference
// with r and sets the artifact's digest, name and size and the package's
// ContentDigest. A reference r cannot resolve is reported as a *FieldError
// (inside an ErrorList) at the artifact field, wrapping r's error.
func ParseAndResolve(filename string, data []byte, r ArtifactResolver) (*ferryv1.Package, error) {
	pkg, artifactNode, err := parse(filename, data)
	if err != nil {
		return nil, err
	}
	if pkg.GetArtifact() != nil {
		if err := resolve(pkg.Artifact, r); err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				fe = &FieldError{Problem: err.Error(), Err: err}
			}
			fe.File, fe.Line, fe.Column, fe.Field = displayName(filename), artifactNode.Line, artifactNode.Column, "artifact"
			return nil, ErrorList{fe}
		}
	}
	pkg.ContentDigest = ContentDigest(pkg)
	return pkg, nil
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func resolve(ref *ferryv1.ArtifactRef, r ArtifactResolver) error {
	if r == nil {
		return &FieldError{Problem: fmt.Sprintf("cannot resolve %q: no artifact resolver", ref.Name), Fix: "this is a bug in the caller"}
	}
	a, err := r.ResolveArtifact(ref.Name)
	if err != nil {
		return &FieldError{
			Problem: fmt.Sprintf("cannot resolve %q: %v", ref.Name, err),
			Fix:     "push the artifact first (ferryctl artifact push) or correct the reference",
			Err:     err,
		}
	}
	if a == nil || !digestRE.MatchString(a.GetDigest()) {
		return &FieldError{
			Problem: fmt.Sprintf("artifact %q resolved to an invalid digest %q", ref.Name, a.GetDigest()),
			Fix:     "check the artifact store",
		}
	}
	ref.Digest, ref.Size = a.GetDigest(), a.GetSize()
	if a.GetName() != "" {
		ref.Name = a.GetName()
	}
	return nil
}

func displayName(filename string) string {
	if filename == "" {
		return "<input>"
	}
	return filename
}

// parser collects the problems of one file.
type parser struct {
	file string
	errs ErrorList
	// targets are the paths steps write, to refuse two steps writing one.
	targets []target
}

type target struct {
	path    string
	field   string
	line    int
	archive bool
}

// full reports whether no more problems will be recorded.
func (p *parser) full() bool { return len(p.errs) > maxErrors }

func (p *parser) add(n *yaml.Node, field, problem, fix string) {
	if len(p.errs) > maxErrors {
		return
	}
	if len(p.errs) == maxErrors {
		p.errs = append(p.errs, &FieldError{File: p.file, Line: n.Line, Problem: "too many problems; stopped looking", Fix: "fix the ones above and try again"})
		return
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: n.Line, Column: n.Column, Field: field, Problem: problem, Fix: fix})
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlParserProblems are the YAML library's parser (not scanner) errors. It
// reports their line counting from 0 and omits it when it is 0, so
// syntaxError adds 1. (Scanner errors are counted from 1.) The tests pin
// this behaviour for the library version in go.mod.
var yamlParserProblems = []string{
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected '-' indicator",
	"did not find expected <document start>",
	"did not find expected <stream-start>",
	"did not find expected key",
	"did not find expected node content",
	"found duplicate %TAG directive",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found undefined tag handle",
}

// syntaxError turns the YAML library's error into a FieldError with the
// line it names.
func syntaxError(file string, err error) *FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if slices.Contains(yamlParserProblems, msg) {
		line++
	}
	fix := "fix the YAML syntax"
	if strings.HasPrefix(msg, "did not find expected ',' or") || msg == "found unexpected end of stream" {
		fix += "; a quoted string or a {...} or [...] that is not closed is a common cause"
	}
	return &FieldError{File: file, Line: line, Problem: "invalid YAML: " + msg, Fix: fix}
}

// decode parses data into its single YAML document.
func (p *parser) decode(data []byte) (doc *yaml.Node) {
	defer func() {
		// The YAML library is not ours; a panic in it must not take the
		// controller down with it.
		if v := recover(); v != nil {
			doc = nil
			p.errs = append(p.errs, &FieldError{File: p.file, Problem: fmt.Sprintf("YAML parser failed: %v", v), Fix: "check the file's YAML syntax"})
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			p.errs = append(p.errs, &FieldError{File: p.file, Problem: "the file is empty", Fix: "a package needs at least name, version and steps"})
			return nil
		}
		p.errs = append(p.errs, syntaxError(p.file, err))
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		line := next.Line
		if err != nil {
			line = 0
		}
		p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Problem: "more than one YAML document", Fix: "put one package in each file, without '---' separators between packages"})
		return nil
	}
	return &root
}

func parse(filename string, data []byte) (*ferryv1.Package, *yaml.Node, error) {
	p := &parser{file: displayName(filename)}
	if len(data) > MaxFileSize {
		return nil, nil, ErrorList{{File: p.file, Problem: fmt.Sprintf("the file is %d bytes, more than the %d allowed", len(data), MaxFileSize), Fix: "ship large content in the artifact instead"}}
	}
	doc := p.decode(data)
	if doc == nil {
		return nil, nil, p.errs
	}
	if p.refuseAliases(doc, map[string]bool{}); len(p.errs) > 0 {
		return nil, nil, p.errs
	}
	var top *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		top = doc.Content[0]
	}
	if top == nil || isNull(top) {
		return nil, nil, ErrorList{{File: p.file, Line: doc.Line, Problem: "the file has no content", Fix: "a package needs at least name, version and steps"}}
	}
	pkg, artifactNode := p.pkg(top)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return a.Line - b.Line })
		return nil, nil, p.errs
	}
	pkg.Source = string(data)
	return pkg, artifactNode, nil
}

// refuseAliases reports the first use of each alias: expanding them would
// let a small file become a huge package, and a package file gains little
// from them.
func (p *parser) refuseAliases(n *yaml.Node, seen map[string]bool) {
	if n.Kind == yaml.AliasNode {
		if !seen[n.Value] {
			seen[n.Value] = true
			p.add(n, "", fmt.Sprintf("YAML alias *%s is not supported", n.Value), "write the value out in full")
		}
		return
	}
	for _, c := range n.Content {
		p.refuseAliases(c, seen)
	}
}

var topFields = []string{"name", "version", "artifact", "steps"}

func (p *parser) pkg(n *yaml.Node) (*ferryv1.Package, *yaml.Node) {
	pkg := &ferryv1.Package{}
	f, ok := p.mapping(n, "", topFields, "a package file is a mapping with name, version, artifact and steps", "field")
	if !ok {
		return pkg, nil
	}
	if v, ok := p.required(n, f, "", "name", "add e.g. name: go"); ok {
		if s, ok := p.str(v, "name"); ok {
			if !nameRE.MatchString(s) {
				p.add(v, "name", fmt.Sprintf("%q is not a valid package name", s), "use 1 to 64 lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit")
			}
			pkg.Name = s
		}
	}
	if v, ok := p.required(n, f, "", "version", "add e.g. version: 1.20.3"); ok {
		if s, ok := p.str(v, "version"); ok {
			if !versionRE.MatchString(s) {
				p.add(v, "version", fmt.Sprintf("%q is not a valid version", s), "use 1 to 128 letters, digits, '.', '_', '+', '-' and '~', starting with a letter or digit")
			}
			pkg.Version = s
		}
	}
	artifactNode := f["artifact"].val
	if artifactNode != nil {
		if s, ok := p.str(artifactNode, "artifact"); ok {
			if problem, fix := checkArtifactRef(s); problem != "" {
				p.add(artifactNode, "artifact", problem, fix)
			}
			pkg.Artifact = &ferryv1.ArtifactRef{Name: s}
		}
	}
	if v, ok := p.required(n, f, "", "steps", "add a list of steps, e.g. steps: [{archive: {dest: /usr/local/go}}]"); ok {
		pkg.Steps = p.steps(v, artifactNode)
	}
	return pkg, artifactNode
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$`)
	hexRE     = regexp.MustCompile(`^[0-9a-f]+$`)
	refNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]*$`)
)

// checkArtifactRef checks the reference's shape; whether it exists is the
// resolver's business.
func checkArtifactRef(s string) (problem, fix string) {
	const fix0 = "write name@version (e.g. go1.20.3.linux-amd64.tar.gz@1.20.3), a name (the latest pushed), or sha256:<hex digest or prefix>"
	if hex, ok := strings.CutPrefix(s, "sha256:"); ok {
		switch {
		case strings.ToLower(hex) != hex:
			return fmt.Sprintf("%q has upper-case hex", s), "write the digest in lower case"
		case !hexRE.MatchString(hex):
			return fmt.Sprintf("%q is not a sha256 digest", s), "the digest is hex digits (0-9, a-f) after sha256:"
		case len(hex) < 8 || len(hex) > 64:
			return fmt.Sprintf("%q has %d hex digits", s, len(hex)), "give between 8 and 64 hex digits of the digest"
		}
		return "", ""
	}
	name, version, hasVersion := strings.Cut(s, "@")
	if len(s) > 256 || !refNameRE.MatchString(name) || (hasVersion && !versionRE.MatchString(version)) {
		return fmt.Sprintf("%q is not a valid artifact reference", s), fix0
	}
	return "", ""
}

func (p *parser) steps(n *yaml.Node, artifact *yaml.Node) []*ferryv1.Step {
	if n.Kind != yaml.SequenceNode {
		p.add(n, "steps", "expected a list of steps, got "+describe(n), "write each step as a list item starting with '-'")
		return nil
	}
	if len(n.Content) == 0 {
		p.add(n, "steps", "no steps", "add at least one step")
		return nil
	}
	if len(n.Content) > MaxSteps {
		p.add(n, "steps", fmt.Sprintf("%d steps, more than the %d allowed", len(n.Content), MaxSteps), "split the package")
		return nil
	}
	var steps []*ferryv1.Step
	var firstArchive string
	broken := false // a step too malformed to know its kind
	for i, sn := range n.Content {
		path := fmt.Sprintf("steps[%d]", i)
		st := p.step(sn, path)
		if st == nil {
			broken = true
			continue
		}
		if st.GetArchive() != nil {
			switch {
			case firstArchive != "":
				p.add(sn, path+".archive", "a second archive step (the first is "+firstArchive+")", "a package has one artifact and one archive step; split it into two packages")
			case artifact == nil:
				p.add(sn, path+".archive", "an archive step needs the package's artifact", "set artifact: at the top level to the artifact to extract")
			}
			if firstArchive == "" {
				firstArchive = path + ".archive"
			}
		}
		steps = append(steps, st)
	}
	if artifact != nil && firstArchive == "" && !broken {
		p.add(artifact, "artifact", "no archive step uses the artifact", "add an archive step to extract it, or remove artifact:")
	}
	return steps
}

var stepKinds = []string{"archive", "env", "sudoers", "file", "check"}

func (p *parser) step(n *yaml.Node, path string) *ferryv1.Step {
	const kinds = "archive, env, sudoers, file or check"
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "expected a step, got "+describe(n), "a step is a mapping with one kind ("+kinds+"), e.g. - check: {run: go version}")
		return nil
	}
	f, ok := p.mapping(n, path, stepKinds, "", "step kind")
	if !ok {
		return nil
	}
	var present []string // in the order written
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i].Value; slices.Contains(stepKinds, k) && !slices.Contains(present, k) {
			present = append(present, k)
		}
	}
	switch {
	case len(f) == 0 && len(n.Content) == 0:
		p.add(n, path, "empty step", "give it one kind: "+kinds)
		return nil
	case len(present) == 0:
		return nil // unknown kind, already reported
	case len(present) > 1:
		p.add(n, path, fmt.Sprintf("a step has exactly one kind, got %s", strings.Join(present, " and ")), "make each kind its own list item")
		return nil
	}
	kind := present[0]
	v := f[kind].val
	path += "." + kind
	switch kind {
	case "archive":
		return &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: p.archive(v, path)}}
	case "env":
		return &ferryv1.Step{Kind: &ferryv1.Step_Env{Env: p.env(v, path)}}
	case "sudoers":
		return &ferryv1.Step{Kind: &ferryv1.Step_Sudoers{Sudoers: p.sudoers(v, path)}}
	case "file":
		return &ferryv1.Step{Kind: &ferryv1.Step_File{File: p.file_(v, path)}}
	default:
		return &ferryv1.Step{Kind: &ferryv1.Step_Check{Check: p.check(v, path)}}
	}
}

var archiveFields = []string{"dest", "strip_components", "keep_previous", "allow_setuid", "max_bytes", "max_entries", "format"}

func (p *parser) archive(n *yaml.Node, path string) *ferryv1.ArchiveStep {
	st := &ferryv1.ArchiveStep{KeepPrevious: DefaultKeepPrevious}
	f, ok := p.mapping(n, path, archiveFields, "e.g. archive: {dest: /usr/local/go, strip_components: 1}", "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "dest", "set dest to the directory to extract into, e.g. /usr/local/go"); ok {
		if s, ok := p.str(v, path+".dest"); ok {
			if p.absPath(v, path+".dest", s) {
				if isSystemDir(s) {
					p.add(v, path+".dest", fmt.Sprintf("%s is a system directory; the archive step replaces dest as a whole", s), "extract into a directory of its own, e.g. /usr/local/NAME or /opt/NAME")
				} else {
					p.claim(v, path+".dest", s, true)
				}
			}
			st.Dest = s
		}
	}
	if v := f["strip_components"].val; v != nil {
		if u, ok := p.uint(v, path+".strip_components", 0, 255); ok {
			st.StripComponents = uint32(u)
		}
	}
	if v := f["keep_previous"].val; v != nil {
		if u, ok := p.uint(v, path+".keep_previous", 0, MaxKeepPrevious); ok {
			if u == 0 {
				p.add(v, path+".keep_previous", "0 would leave nothing to roll back to", fmt.Sprintf("keep at least 1 (and at most %d) previous versions", MaxKeepPrevious))
			}
			st.KeepPrevious = uint32(u)
		}
	}
	if v := f["allow_setuid"].val; v != nil {
		st.AllowSetuid, _ = p.bool(v, path+".allow_setuid")
	}
	if v := f["max_bytes"].val; v != nil {
		st.MaxBytes, _ = p.size(v, path+".max_bytes")
	}
	if v := f["max_entries"].val; v != nil {
		st.MaxEntries, _ = p.uint(v, path+".max_entries", 1, 1<<40)
	}
	if v := f["format"].val; v != nil {
		if s, ok := p.str(v, path+".format"); ok {
			switch s {
			case "tar", "tar.gz", "zip":
				st.Format = s
			case "tgz":
				st.Format = "tar.gz"
			default:
				p.add(v, path+".format", fmt.Sprintf("unknown archive format %q", s), "use tar, tar.gz or zip, or leave format out to detect it")
			}
		}
	}
	return st
}

// isSystemDir reports directories an archive step must never replace
// wholesale.
func isSystemDir(p string) bool {
	if strings.Count(p, "/") == 1 { // "/", "/usr", "/opt", ...
		return true
	}
	return slices.Contains([]string{
		"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec",
		"/usr/include", "/usr/share", "/usr/src", "/usr/local",
		"/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/lib64",
		"/usr/local/libexec", "/usr/local/include", "/usr/local/share", "/usr/local/etc", "/usr/local/src",
		"/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/tmp", "/var/run", "/var/mail", "/var/opt",
		"/etc/profile.d", "/etc/sudoers.d", "/etc/systemd", "/etc/ssh", "/etc/ssl", "/etc/pam.d", "/etc/security",
	}, p)
}

var envFields = []string{"name", "vars", "path"}

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	envVarRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

func (p *parser) env(n *yaml.Node, path string) *ferryv1.EnvStep {
	st := &ferryv1.EnvStep{}
	f, ok := p.mapping(n, path, envFields, "e.g. env: {name: go, vars: {GOROOT: /usr/local/go}, path: [/usr/local/go/bin]}", "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "name", "set name to the file name under /etc/profile.d, without .sh, e.g. name: go"); ok {
		if s, ok := p.str(v, path+".name"); ok {
			switch {
			case strings.HasSuffix(s, ".sh") && fileNameRE.MatchString(strings.TrimSuffix(s, ".sh")):
				p.add(v, path+".name", fmt.Sprintf("%q ends in .sh", s), fmt.Sprintf("write name: %s; Ferry adds .sh", strings.TrimSuffix(s, ".sh")))
			case !fileNameRE.MatchString(s):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid env file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			default:
				p.claim(v, path+".name", "/etc/profile.d/"+s+".sh", false)
			}
			st.Name = s
		}
	}
	if v := f["vars"].val; v != nil {
		st.Vars = p.envVars(v, path+".vars")
	}
	if v := f["path"].val; v != nil {
		st.Path = p.envPath(v, path+".path")
	}
	if len(st.Vars) == 0 && len(st.Path) == 0 && f["vars"].val == nil && f["path"].val == nil {
		p.add(n, path, "the env file would set nothing", "add vars (NAME: value) and/or path (directories to add to PATH)")
	}
	return st
}

func (p *parser) envVars(n *yaml.Node, path string) []*ferryv1.EnvVar {
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "expected a mapping of NAME: value, got "+describe(n), "e.g. vars: {GOROOT: /usr/local/go}")
		return nil
	}
	var vars []*ferryv1.EnvVar
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name, ok := p.key(k, path)
		if !ok {
			continue
		}
		field := path + "." + name
		if line, dup := seen[name]; dup {
			p.add(k, field, fmt.Sprintf("set twice (first on line %d)", line), "keep one")
			continue
		}
		seen[name] = k.Line
		switch {
		case name == "PATH":
			p.add(k, field, "PATH cannot be set directly", "use env.path to add directories")
			continue
		case !envVarRE.MatchString(name):
			p.add(k, field, fmt.Sprintf("%q is not a valid variable name", name), "use letters, digits and '_', not starting with a digit")
			continue
		}
		if isNull(v) {
			p.add(v, field, "has no value", fmt.Sprintf("write %s: \"\" for an empty value", name))
			continue
		}
		s, ok := p.str(v, field)
		if !ok {
			continue
		}
		if strings.ContainsRune(s, 0) {
			p.add(v, field, "the value contains a NUL byte", "remove it; environment values cannot hold NUL")
			continue
		}
		vars = append(vars, &ferryv1.EnvVar{Name: name, Value: s})
	}
	return vars
}

func (p *parser) envPath(n *yaml.Node, path string) []string {
	items, ok := p.strList(n, path, "e.g. path: [/usr/local/go/bin]")
	if !ok {
		return nil
	}
	var dirs []string
	seen := map[string]int{}
	for i, s := range items {
		field := fmt.Sprintf("%s[%d]", path, i)
		v := n.Content[i]
		if line, dup := seen[s]; dup {
			p.add(v, field, fmt.Sprintf("%s is listed twice (first on line %d)", s, line), "keep one")
			continue
		}
		seen[s] = v.Line
		if !p.absPath(v, field, s) {
			continue
		}
		if strings.Contains(s, ":") {
			p.add(v, field, fmt.Sprintf("%q contains ':', the PATH separator", s), "list each directory as its own item")
			continue
		}
		dirs = append(dirs, s)
	}
	return dirs
}

var sudoersFields = []string{"name", "rules"}

func (p *parser) sudoers(n *yaml.Node, path string) *ferryv1.SudoersStep {
	st := &ferryv1.SudoersStep{}
	f, ok := p.mapping(n, path, sudoersFields, `e.g. sudoers: {name: deploy, rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "name", "set name to the file name under /etc/sudoers.d, e.g. name: deploy"); ok {
		if s, ok := p.str(v, path+".name"); ok {
			switch {
			case strings.Contains(s, "/"):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid sudoers file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			case strings.Contains(s, "."):
				p.add(v, path+".name", fmt.Sprintf("%q contains '.', and sudo silently ignores such files in /etc/sudoers.d", s), "use a name without '.', e.g. "+strings.ReplaceAll(s, ".", "-"))
			case strings.HasSuffix(s, "~"):
				p.add(v, path+".name", fmt.Sprintf("%q ends in '~', and sudo silently ignores such files in /etc/sudoers.d", s), "drop the '~'")
			case !fileNameRE.MatchString(s):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid sudoers file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			default:
				p.claim(v, path+".name", "/etc/sudoers.d/"+s, false)
			}
			st.Name = s
		}
	}
	if v, ok := p.required(n, f, path, "rules", `add the sudoers lines, e.g. rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]`); ok {
		items, ok := p.strList(v, path+".rules", `e.g. rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]`)
		if ok && len(items) == 0 {
			p.add(v, path+".rules", "no rules", "add at least one sudoers line")
		}
		for i, s := range items {
			field := fmt.Sprintf("%s.rules[%d]", path, i)
			rn := v.Content[i]
			trimmed := strings.TrimSpace(s)
			switch {
			case trimmed == "":
				p.add(rn, field, "empty rule", "remove it")
				continue
			case strings.ContainsAny(s, "\n\r"):
				p.add(rn, field, "a rule spans several lines", "write each sudoers line as its own list item")
				continue
			case hasControl(s, "\t"):
				p.add(rn, field, "the rule contains control characters", "remove them")
				continue
			case isInclude(trimmed):
				p.add(rn, field, "include directives are not allowed in a fragment", "write the rules themselves so Ferry can validate them")
				continue
			}
			st.Rules = append(st.Rules, s)
		}
	}
	return st
}

func isInclude(rule string) bool {
	for _, d := range []string{"#include", "@include"} {
		if strings.HasPrefix(rule, d) {
			return true
		}
	}
	return false
}

var fileFields = []string{"path", "content", "mode", "owner", "group"}

var ownerRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)

func (p *parser) file_(n *yaml.Node, path string) *ferryv1.FileStep {
	st := &ferryv1.FileStep{Mode: DefaultFileMode}
	f, ok := p.mapping(n, path, fileFields, `e.g. file: {path: /etc/myapp/config, content: "...", mode: "0644"}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "path", "set path to the absolute file path, e.g. /etc/myapp/config"); ok {
		if s, ok := p.str(v, path+".path"); ok {
			if p.absPath(v, path+".path", s) {
				switch {
				case s == "/":
					p.add(v, path+".path", "/ is a directory", "name the file to write")
				case s == "/etc/sudoers" || strings.HasPrefix(s, "/etc/sudoers.d/"):
					p.add(v, path+".path", "sudoers files cannot be written with a file step", "use a sudoers step, which validates the rules before writing them")
				default:
					p.claim(v, path+".path", s, false)
				}
			}
			st.Path = s
		}
	}
	if v, ok := p.required(n, f, path, "content", `set the file's content; write content: "" for an empty file`); ok {
		st.Content, _ = p.content(v, path+".content")
	}
	if v := f["mode"].val; v != nil {
		if m, ok := p.mode(v, path+".mode"); ok {
			st.Mode = m
		}
	}
	for _, k := range []string{"owner", "group"} {
		v := f[k].val
		if v == nil {
			continue
		}
		s, ok := p.str(v, path+"."+k)
		if !ok {
			continue
		}
		if !ownerRE.MatchString(s) {
			p.add(v, path+"."+k, fmt.Sprintf("%q is not a valid %s name", s, map[string]string{"owner": "user", "group": "group"}[k]), "use a name like root or deploy, or a numeric id")
			continue
		}
		if k == "owner" {
			st.Owner = s
		} else {
			st.Group = s
		}
	}
	return st
}

var checkFields = []string{"run", "expect", "timeout"}

func (p *parser) check(n *yaml.Node, path string) *ferryv1.CheckStep {
	st := &ferryv1.CheckStep{Timeout: durationpb.New(DefaultCheckTimeout)}
	f, ok := p.mapping(n, path, checkFields, `e.g. check: {run: go version, expect: go1.20.3}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "run", "set run to the command to run, e.g. run: go version"); ok {
		if s, ok := p.str(v, path+".run"); ok {
			switch {
			case strings.TrimSpace(s) == "":
				p.add(v, path+".run", "empty command", "set run to the command to run, e.g. run: go version")
			case strings.ContainsRune(s, 0):
				p.add(v, path+".run", "the command contains a NUL byte", "remove it")
			}
			st.Run = s
		}
	}
	if v := f["expect"].val; v != nil {
		if s, ok := p.str(v, path+".expect"); ok {
			if strings.ContainsRune(s, 0) {
				p.add(v, path+".expect", "contains a NUL byte", "remove it")
			}
			st.Expect = s
		}
	}
	if v := f["timeout"].val; v != nil {
		if d, ok := p.duration(v, path+".timeout"); ok {
			st.Timeout = durationpb.New(d)
		}
	}
	return st
}

// claim records that a step writes path and refuses a path another step
// already writes, or one inside (or above) another step's path.
func (p *parser) claim(n *yaml.Node, field, path string, archive bool) {
	for _, t := range p.targets {
		same := t.path == path
		inside := strings.HasPrefix(path, t.path+"/") || strings.HasPrefix(t.path, path+"/")
		if !same && !inside {
			continue
		}
		problem := fmt.Sprintf("%s is also written by %s (line %d)", path, t.field, t.line)
		if !same {
			problem = fmt.Sprintf("%s overlaps %s written by %s (line %d)", path, t.path, t.field, t.line)
		}
		fix := "each path can be written by one step only"
		if (archive || t.archive) && !same {
			fix = "the archive step replaces its dest as a whole; put the file outside it or in the archive"
		}
		p.add(n, field, problem, fix)
		return
	}
	p.targets = append(p.targets, target{path: path, field: field, line: n.Line, archive: archive})
}
