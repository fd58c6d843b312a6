// Package labels is the syntax of node labels, Kubernetes' rules: the
// agent checks its --label flags with it before sending them, the
// controller checks every label it receives or an admin sets, and join
// tokens' allow-lists ("rack=*") say which labels a node may ask for.
//
// A key is an optional DNS subdomain prefix and '/' and a name; the name
// and the value are at most 63 characters of [A-Za-z0-9._-], starting and
// ending with a letter or digit (a value may be empty). A node has at most
// MaxLabels labels, and "group" is reserved: the group is its own field.
package labels

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
)

// The limits of the syntax.
const (
	MaxNameLen   = 63
	MaxPrefixLen = 253
	MaxValueLen  = 63
	MaxLabels    = 32
	// MaxPatterns bounds a join token's allow-list.
	MaxPatterns = 32
	// Reserved is the key no label may have: the group comes from the
	// join token and changes with `ferryctl node move`.
	Reserved = "group"
)

// ErrInvalid is matched (errors.Is) by every error for a label, a label
// set or an allow pattern that breaks the syntax or a limit.
var ErrInvalid = errors.New("invalid label")

// ErrNotAllowed is matched by Grant's error for a label the join token
// does not let a node choose.
var ErrNotAllowed = errors.New("label not allowed")

type invalid struct{ error }

func (invalid) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error { return invalid{fmt.Errorf(format, args...)} }

type notAllowed struct{ error }

func (notAllowed) Is(target error) bool { return target == ErrNotAllowed }

const nameRule = "at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"

// ValidateKey checks a label key: [prefix/]name.
func ValidateKey(key string) error {
	name := key
	if prefix, rest, hasPrefix := strings.Cut(key, "/"); hasPrefix {
		name = rest
		if err := validatePrefix(prefix); err != nil {
			return invalidf("label key %q: prefix %w", clip(key), err)
		}
	}
	if key == Reserved {
		return invalidf(`label key %q is reserved: the group comes from the join token; change it with ferryctl node move`, key)
	}
	if !validName(name, false) {
		return invalidf("label key %q: the name after any prefix must be %s", clip(key), nameRule)
	}
	return nil
}

// ValidateValue checks the value of label key.
func ValidateValue(key, value string) error {
	if !validName(value, true) {
		return invalidf("label %s: value %q must be empty or %s", clip(key), clip(value), nameRule)
	}
	return nil
}

// Validate checks a node's whole label set: at most MaxLabels labels, each
// valid. The first bad key in sorted order is reported.
func Validate(set map[string]string) error {
	if len(set) > MaxLabels {
		return invalidf("%d labels: a node has at most %d", len(set), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		if err := ValidateKey(k); err != nil {
			return err
		}
		if err := ValidateValue(k, set[k]); err != nil {
			return err
		}
	}
	return nil
}

// Format writes a label set as "k=v,k2=v2", sorted by key.
func Format(set map[string]string) string {
	parts := make([]string, 0, len(set))
	for _, k := range slices.Sorted(maps.Keys(set)) {
		parts = append(parts, k+"="+set[k])
	}
	return strings.Join(parts, ",")
}

// Parse splits "key=value" and validates both parts.
func Parse(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", invalidf("label %q: want key=value", clip(s))
	}
	if err := ValidateKey(key); err != nil {
		return "", "", err
	}
	if err := ValidateValue(key, value); err != nil {
		return "", "", err
	}
	return key, value, nil
}

// ParseChanges reads kubectl-style label arguments: "key=value" sets a
// label, "key-" removes one. A key set and removed at once is an error.
func ParseChanges(args []string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	for _, a := range args {
		if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
			if err := ValidateKey(k); err != nil {
				return nil, nil, err
			}
			remove = append(remove, k)
			continue
		}
		k, v, err := Parse(a)
		if err != nil {
			return nil, nil, invalidf("%w (use key=value to set a label, key- to remove one)", err)
		}
		set[k] = v
	}
	for _, k := range remove {
		if _, ok := set[k]; ok {
			return nil, nil, invalidf("label %s is both set and removed; choose one", k)
		}
	}
	return set, remove, nil
}

// Apply returns a copy of labels with set added and remove taken away,
// refusing the result if it breaks a limit. Removing an absent key is no
// error (as with kubectl).
func Apply(labels, set map[string]string, remove []string) (map[string]string, error) {
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range remove {
		if err := ValidateKey(k); err != nil {
			return nil, err
		}
		delete(out, k)
	}
	maps.Copy(out, set)
	if err := Validate(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ValidatePatterns checks an allow-list: each entry "key=glob", with an
// exact key and a glob on the value ('*' any characters, '?' one), at most
// MaxPatterns entries.
func ValidatePatterns(patterns []string) error {
	if len(patterns) > MaxPatterns {
		return invalidf("%d allowed labels: a join token allows at most %d", len(patterns), MaxPatterns)
	}
	for _, p := range patterns {
		key, glob, ok := strings.Cut(p, "=")
		if !ok {
			return invalidf("allowed label %q: want key=value-glob, e.g. rack=* or dc=sh1", clip(p))
		}
		if err := ValidateKey(key); err != nil {
			return err
		}
		if !validName(strings.NewReplacer("*", "a", "?", "a").Replace(glob), true) {
			return invalidf("allowed label %q: the value glob must be %s, with '*' and '?' as wildcards", clip(p), nameRule)
		}
	}
	return nil
}

// Allowed says whether the allow-list lets a node choose key=value.
func Allowed(patterns []string, key, value string) bool {
	for _, p := range patterns {
		k, glob, _ := strings.Cut(p, "=")
		if k != key {
			continue
		}
		if ok, err := path.Match(glob, value); err == nil && ok {
			return true
		}
	}
	return false
}

// Grant is the label set a node enrolls with: what it asked for, each
// label allowed by the allow-list, with the token's own labels on top
// (a token label replaces a requested one of the same key, without an
// error). It refuses the first requested label, in sorted order, that the
// allow-list does not allow, naming it and the list.
func Grant(requested, token map[string]string, allow []string) (map[string]string, error) {
	if err := Validate(requested); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(requested)+len(token))
	for _, k := range slices.Sorted(maps.Keys(requested)) {
		if _, ok := token[k]; ok {
			continue
		}
		v := requested[k]
		if !Allowed(allow, k, v) {
			list := "nothing"
			if len(allow) > 0 {
				list = strings.Join(allow, ", ")
			}
			return nil, notAllowed{fmt.Errorf("label %s=%s is not allowed by the join token (it allows %s); ask for a token created with --allow-label %s=..., or have an admin set it with `ferryctl node label`", k, v, list, k)}
		}
		out[k] = v
	}
	maps.Copy(out, token)
	if err := Validate(out); err != nil {
		return nil, err
	}
	return out, nil
}

// validatePrefix checks a DNS subdomain: lowercase RFC 1123 labels joined
// by dots, at most 253 characters.
func validatePrefix(p string) error {
	if p == "" || len(p) > MaxPrefixLen {
		return fmt.Errorf("must be a DNS subdomain of 1 to %d characters", MaxPrefixLen)
	}
	for _, part := range strings.Split(p, ".") {
		if part == "" || len(part) > 63 || !isAlnumLower(part[0]) || !isAlnumLower(part[len(part)-1]) {
			return errors.New("must be a DNS subdomain: lowercase letters, digits and '-' in dot-separated parts of at most 63, e.g. example.com")
		}
		for i := 0; i < len(part); i++ {
			if c := part[i]; !isAlnumLower(c) && c != '-' {
				return errors.New("must be a DNS subdomain: lowercase letters, digits and '-' in dot-separated parts of at most 63, e.g. example.com")
			}
		}
	}
	return nil
}

func validName(s string, emptyOK bool) bool {
	if s == "" {
		return emptyOK
	}
	if len(s) > MaxNameLen || !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnumLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isAlnumLower(c) || c >= 'A' && c <= 'Z' }

// clip shortens what an error quotes: the input may be huge.
func clip(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:77] + "..."
}
