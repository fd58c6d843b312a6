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
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

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
	DefaultFileMode     = 0o600
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
// filled in (archive.keep_previous 1, file.mode 0600, check.timeout 30s).
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
		if fe := resolve(pkg.Artifact, r); fe != nil {
			fe.File, fe.Line, fe.Column, fe.Field = displayName(filename), artifactNode.Line, artifactNode.Column, "artifact"
			return nil, ErrorList{fe}
		}
	}
	pkg.ContentDigest = ContentDigest(pkg)
	return pkg, nil
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// resolve fills ref from r; the caller places the error in the file.
func resolve(ref *ferryv1.ArtifactRef, r ArtifactResolver) *FieldError {
	if r == nil {
		return &FieldError{Problem: fmt.Sprintf("cannot resolve %q: no artifact resolver", ref.Name), Fix: "pass an ArtifactResolver to ParseAndResolve"}
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
	// truncated is set when problems were left out of errs.
	truncated bool
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
func (p *parser) full() bool { return len(p.errs) >= maxErrors }

func (p *parser) add(n *yaml.Node, field, problem, fix string) {
	if p.full() {
		p.truncated = true
		return
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: n.Line, Column: n.Column, Field: field, Problem: problem, Fix: fix})
}

// result orders the problems by line and notes any left out.
func (p *parser) result() ErrorList {
	slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return a.Line - b.Line })
	if p.truncated {
		p.errs = append(p.errs, &FieldError{File: p.file, Problem: fmt.Sprintf("more than %d problems; stopped looking", maxErrors), Fix: "fix the ones above and try again"})
	}
	return p.errs
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

// CheckFile refuses what no package file can be before it is parsed or
// sent: more than MaxFileSize bytes, or text that is not UTF-8 (named by
// line). ferryctl runs it before the upload, so the answer names the file
// instead of a gRPC size or encoding error.
func CheckFile(filename string, data []byte) error {
	file := displayName(filename)
	if len(data) > MaxFileSize {
		return ErrorList{{File: file, Problem: fmt.Sprintf("the file is %d bytes, more than the %d allowed", len(data), MaxFileSize), Fix: "ship large content in the artifact instead"}}
	}
	if !utf8.Valid(data) {
		for off := 0; off < len(data); {
			r, size := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && size <= 1 {
				line := bytes.Count(data[:off], []byte("\n")) + 1
				return ErrorList{{File: file, Line: line, Problem: fmt.Sprintf("byte 0x%02x at column %d is not UTF-8 text", data[off], off-bytes.LastIndexByte(data[:off], '\n')),
					Fix: "save the file as UTF-8 (iconv -t UTF-8), and put binary content in the artifact"}}
			}
			off += size
		}
	}
	return nil
}

func parse(filename string, data []byte) (*ferryv1.Package, *yaml.Node, error) {
	p := &parser{file: displayName(filename)}
	if err := CheckFile(filename, data); err != nil {
		return nil, nil, err
	}
	doc := p.decode(data)
	if doc == nil {
		return nil, nil, p.errs
	}
	if p.refuseAliases(doc, map[string]bool{}); len(p.errs) > 0 {
		return nil, nil, p.result()
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
		return nil, nil, p.result()
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
