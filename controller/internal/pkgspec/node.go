package pkgspec

import (
	"encoding/base64"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/ferrydeploy/ferry/shared/bytesize"
)

// field is one key and its value in a mapping.
type field struct{ key, val *yaml.Node }

// mapping checks that n is a mapping whose keys are all in known, each at
// most once, and returns its fields by key. example shows a correct mapping
// in the error when n is something else; noun names what the keys are.
func (p *parser) mapping(n *yaml.Node, path string, known []string, example, noun string) (map[string]field, bool) {
	if n.Kind != yaml.MappingNode {
		fix := example
		if fix == "" {
			fix = "write a mapping of field: value"
		}
		p.add(n, path, "expected a mapping, got "+describe(n), fix)
		return nil, false
	}
	f := make(map[string]field, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name, ok := p.key(k, path)
		if !ok {
			continue
		}
		fp := join(path, name)
		if prev, dup := f[name]; dup {
			p.add(k, fp, fmt.Sprintf("set twice (first on line %d)", prev.key.Line), "keep one")
			continue
		}
		if !slices.Contains(known, name) {
			if p.full() { // suggest is not free; a huge file of typos must stay cheap
				p.truncated = true
			} else {
				p.add(k, fp, "unknown "+noun, suggest(name, known, noun))
			}
			continue
		}
		f[name] = field{k, v}
	}
	return f, true
}

// key returns a mapping key's text; keys must be plain scalars.
func (p *parser) key(k *yaml.Node, path string) (string, bool) {
	if k.Kind != yaml.ScalarNode {
		p.add(k, path, "a key is "+describe(k), "keys must be plain names")
		return "", false
	}
	return k.Value, true
}

// required returns the value of a field that must be present and have a
// value; parent locates the error when it is missing.
func (p *parser) required(parent *yaml.Node, f map[string]field, path, name, fix string) (*yaml.Node, bool) {
	fld, ok := f[name]
	if !ok {
		p.add(parent, join(path, name), "missing", fix)
		return nil, false
	}
	if isNull(fld.val) {
		p.add(fld.val, join(path, name), "has no value", fix)
		return nil, false
	}
	return fld.val, true
}

// str returns a scalar's text as written. Numbers and dates are taken as
// written (version: 1.20 is "1.20"); booleans and null are refused because
// they are far more often a mistake than meant as text.
func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.add(n, path, "expected a string, got "+describe(n), "write a single value; quote it if it contains ': ' or starts with '[' or '{'")
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!timestamp":
		return n.Value, true
	case "!!null":
		p.add(n, path, "has no value", "give it a value, or leave the field out")
	case "!!bool":
		p.add(n, path, fmt.Sprintf("expected a string, got the boolean %s", n.Value), fmt.Sprintf("quote it if you mean the text: %q", n.Value))
	default:
		p.add(n, path, fmt.Sprintf("unexpected tag %s", n.Tag), "remove the tag")
	}
	return "", false
}

// strList returns the texts of a list of strings.
func (p *parser) strList(n *yaml.Node, path, example string) ([]string, bool) {
	if n.Kind != yaml.SequenceNode {
		p.add(n, path, "expected a list, got "+describe(n), example)
		return nil, false
	}
	items := make([]string, len(n.Content))
	ok := true
	for i, c := range n.Content {
		s, good := p.str(c, fmt.Sprintf("%s[%d]", path, i))
		items[i] = s
		ok = ok && good
	}
	return items, ok
}

func (p *parser) uint(n *yaml.Node, path string, lo, hi uint64) (uint64, bool) {
	bigInt := n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && strings.Trim(n.Value, "0123456789") == ""
	if !bigInt && (n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int") {
		p.add(n, path, "expected a whole number, got "+describe(n), "write a number without quotes, e.g. 1")
		return 0, false
	}
	u, err := strconv.ParseUint(n.Value, 10, 64)
	if err != nil || u < lo || u > hi {
		p.add(n, path, fmt.Sprintf("%s is out of range", n.Value), fmt.Sprintf("use a whole number from %d to %d", lo, hi))
		return 0, false
	}
	return u, true
}

func (p *parser) bool(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		p.add(n, path, "expected true or false, got "+describe(n), "write true or false without quotes")
		return false
	}
	return strings.EqualFold(n.Value, "true")
}

// size reads a byte count: a whole number of bytes or a number with a unit
// (2GiB, 500MB).
func (p *parser) size(n *yaml.Node, path string) (uint64, bool) {
	const fix = "write a number of bytes, or a number with a unit (" + bytesize.Units + "), e.g. 2GiB"
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!str") {
		p.add(n, path, "expected a size, got "+describe(n), fix)
		return 0, false
	}
	v, err := bytesize.Parse(n.Value)
	if err != nil || v == 0 {
		p.add(n, path, fmt.Sprintf("%q is not a valid size", n.Value), fix+"; it must be more than 0 (leave it out for the agent's default)")
		return 0, false
	}
	return v, true
}

// mode reads permission bits, always in octal as chmod does: "0644", 644,
// 0o755, "4755".
func (p *parser) mode(n *yaml.Node, path string) (uint32, bool) {
	const fix = `write the mode in octal as chmod takes it, e.g. "0644" or "0755"`
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!str") {
		p.add(n, path, "expected a file mode, got "+describe(n), fix)
		return 0, false
	}
	s := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	if len(s) < 3 || len(s) > 5 || strings.Trim(s, "01234567") != "" {
		p.add(n, path, fmt.Sprintf("%q is not an octal mode", n.Value), fix)
		return 0, false
	}
	m, err := strconv.ParseUint(s, 8, 32)
	switch {
	case err != nil || m > 0o7777:
		p.add(n, path, fmt.Sprintf("%s is more than 07777", n.Value), fix)
		return 0, false
	case m == 0:
		p.add(n, path, "mode 0000 leaves the file unusable", fix)
		return 0, false
	}
	return uint32(m), true
}

func (p *parser) duration(n *yaml.Node, path string) (time.Duration, bool) {
	const fix = "write a duration with a unit, e.g. 30s, 2m or 1m30s"
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		p.add(n, path, "expected a duration, got "+describe(n), fix)
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	switch {
	case err != nil && n.ShortTag() == "!!int":
		p.add(n, path, fmt.Sprintf("%s has no unit", n.Value), fmt.Sprintf("write e.g. %ss", n.Value))
	case err != nil:
		p.add(n, path, fmt.Sprintf("%q is not a duration", n.Value), fix)
	case d <= 0:
		p.add(n, path, fmt.Sprintf("%s is not more than zero", n.Value), fix)
	case d > MaxCheckTimeout:
		p.add(n, path, fmt.Sprintf("%s is more than %s", n.Value, MaxCheckTimeout), "checks run during the install; keep them under an hour")
	default:
		return d, true
	}
	return 0, false
}

// content reads a file's content: text, or bytes written as !!binary
// (base64).
func (p *parser) content(n *yaml.Node, path string) ([]byte, bool) {
	var b []byte
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!binary" {
		var err error
		b, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(n.Value), ""))
		if err != nil {
			p.add(n, path, "!!binary content is not valid base64", "encode the bytes with base64")
			return nil, false
		}
	} else {
		s, ok := p.str(n, path)
		if !ok {
			return nil, false
		}
		b = []byte(s)
	}
	if len(b) > MaxContentSize {
		p.add(n, path, fmt.Sprintf("%d bytes, more than the %d allowed", len(b), MaxContentSize), "ship large files in the artifact")
		return nil, false
	}
	return b, true
}

// absPath checks a path on the node: absolute, clean, no "..", no control
// characters. Every such path is taken under the agent's install root.
func (p *parser) absPath(n *yaml.Node, field, s string) bool {
	switch {
	case s == "":
		p.add(n, field, "empty path", "write an absolute path, e.g. /usr/local/go")
	case hasControl(s, ""):
		p.add(n, field, fmt.Sprintf("%q contains control characters", s), "remove them")
	case len(s) > 4096:
		p.add(n, field, "path longer than 4096 bytes", "use a shorter path")
	case !strings.HasPrefix(s, "/"):
		p.add(n, field, fmt.Sprintf("%q is a relative path", s), "write an absolute path starting with /; it is taken under the agent's install root")
	case slices.Contains(strings.Split(s, "/"), ".."):
		p.add(n, field, fmt.Sprintf("%q contains '..'", s), "write the path without '..'")
	case path.Clean(s) != s:
		p.add(n, field, fmt.Sprintf("%q is not in its simplest form", s), fmt.Sprintf("write %s", path.Clean(s)))
	default:
		return true
	}
	return false
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's type for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "no value"
		case "!!bool":
			return "the boolean " + n.Value
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!str":
			return fmt.Sprintf("the string %q", truncate(n.Value, 40))
		}
		return "a " + n.ShortTag() + " value"
	}
	return "nothing"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// hasControl reports control characters in s other than those in allowed.
func hasControl(s, allowed string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) && !strings.ContainsRune(allowed, r)
	})
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// suggest names the known field closest to an unknown one.
func suggest(name string, known []string, noun string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(name), k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %s? (%ss: %s)", best, noun, strings.Join(known, ", "))
	}
	return fmt.Sprintf("use one of the %ss: %s", noun, strings.Join(known, ", "))
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
