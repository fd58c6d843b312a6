// Package daemonconfig is the settings of the Ferry daemons: a YAML file
// (/etc/ferry/controller.yaml, /etc/ferry/agent.yaml) whose keys are the
// daemon's command-line flags, applied under the flags so a flag given on
// the command line wins, and compared with the running settings when the
// daemon reloads it (SIGHUP).
//
// One key per flag, spelled as the flag: what `--help` documents is what
// the file takes, and a flag added to a daemon is a key with no further
// work. Errors name the file, the line and the key.
package daemonconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds what Read loads: a settings file is a few kilobytes.
const maxFileSize = 1 << 20

// File is a parsed config file: its top-level keys in order.
type File struct {
	Path    string
	entries []entry
}

type entry struct {
	key  string
	line int
	node *yaml.Node
}

// Read parses the file at path. It must be a YAML mapping of keys to
// values (a file with only comments is empty, not an error); a key given
// twice is an error.
func Read(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config file %s has %d bytes, more than a settings file can need (%d); is it the right file?", path, len(data), maxFileSize)
	}
	return Parse(path, data)
}

// Parse parses data, which came from the file path (named in errors).
func Parse(path string, data []byte) (*File, error) {
	f := &File{Path: path}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f, nil // empty, or comments only
		}
		return nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s:%d: a second YAML document; a config file has one", path, extra.Line)
	}
	if len(doc.Content) == 0 {
		return f, nil
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want key: value lines (a mapping), not %s", path, top.Line, kindName(top))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			return nil, fmt.Errorf("%s:%d: a key must be a plain name such as log-level", path, k.Line)
		}
		if first, dup := seen[k.Value]; dup {
			return nil, fmt.Errorf("%s:%d: %s is given twice (first on line %d); keep one", path, k.Line, k.Value, first)
		}
		seen[k.Value] = k.Line
		f.entries = append(f.entries, entry{key: k.Value, line: k.Line, node: v})
	}
	return f, nil
}

// Apply sets every flag of fs the file has a key for, unless the command
// line set it already (flags override the file). A key that is no flag of
// fs is an error, unless known reports it as a key of the same file that
// another command reads (ferry-agent enroll reads agent.yaml too); known
// may be nil. Values are checked by the flags themselves, so a bad one is
// refused with the flag's reason.
func (f *File) Apply(fs *pflag.FlagSet, known func(key string) bool) error {
	for _, e := range f.entries {
		fl := fs.Lookup(e.key)
		if fl == nil || fl.Hidden {
			if known != nil && known(e.key) {
				continue
			}
			return fmt.Errorf("%s:%d: unknown key %q; the keys are the flags: %s", f.Path, e.line, e.key, strings.Join(Keys(fs), ", "))
		}
		if fl.Changed {
			continue
		}
		if err := set(fl, e.node); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", f.Path, e.line, e.key, err)
		}
	}
	return nil
}

// Keys lists the flags of fs a config file may set, sorted.
func Keys(fs *pflag.FlagSet) []string {
	var keys []string
	fs.VisitAll(func(fl *pflag.Flag) {
		if !fl.Hidden && !CommandLineOnly(fl) {
			keys = append(keys, fl.Name)
		}
	})
	sort.Strings(keys)
	return keys
}

// commandLineOnly marks a flag no config file sets: --config itself,
// --help, --version, and one-off decisions such as --new-store that must
// never stay in a file and repeat on every start.
const commandLineOnly = "daemonconfig_command_line_only"

// MarkCommandLineOnly keeps the named flag out of config files.
func MarkCommandLineOnly(fs *pflag.FlagSet, names ...string) {
	for _, n := range names {
		if err := fs.SetAnnotation(n, commandLineOnly, []string{"true"}); err != nil {
			panic(fmt.Sprintf("daemonconfig: %v", err)) // a programming error: the flag is not defined
		}
	}
}

// CommandLineOnly reports whether fl is kept out of config files.
func CommandLineOnly(fl *pflag.Flag) bool {
	if fl.Name == "help" || fl.Name == "version" || fl.Name == "config" {
		return true
	}
	_, ok := fl.Annotations[commandLineOnly]
	return ok
}

// set gives fl the value of node without marking it changed, so Apply
// can tell a flag set on the command line from one set by the file.
func set(fl *pflag.Flag, node *yaml.Node) error {
	if CommandLineOnly(fl) {
		return errors.New("is a command-line flag only; remove it from the file and give it as --" + fl.Name + " when it is needed")
	}
	switch node.Kind {
	case yaml.ScalarNode:
		if node.Tag == "!!null" {
			return fmt.Errorf(`has no value; give one (e.g. "" for an empty %s) or remove the line`, fl.Value.Type())
		}
		return setValue(fl, node.Value)
	case yaml.SequenceNode:
		sv, ok := fl.Value.(pflag.SliceValue)
		if !ok {
			return fmt.Errorf("takes one %s, not a list", fl.Value.Type())
		}
		var items []string
		for _, it := range node.Content {
			if it.Kind != yaml.ScalarNode || it.Tag == "!!null" {
				return fmt.Errorf("line %d: a list item must be a plain value", it.Line)
			}
			items = append(items, it.Value)
		}
		return sv.Replace(items)
	default:
		return fmt.Errorf("takes one %s, not %s", fl.Value.Type(), kindName(node))
	}
}

// setValue sets one value; the plain types' parse errors are said in
// words, the flags' own types (log levels, choices) say theirs.
func setValue(fl *pflag.Flag, v string) error {
	err := fl.Value.Set(v)
	if err == nil {
		return nil
	}
	switch fl.Value.Type() {
	case "duration":
		return fmt.Errorf("%q is not a duration; write it like 5s, 1m30s or 720h", v)
	case "int", "uint", "int64", "uint64":
		return fmt.Errorf("%q is not a whole number", v)
	case "bool":
		return fmt.Errorf("%q is not true or false", v)
	}
	return err
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	default:
		return "a " + strings.TrimPrefix(n.Tag, "!!")
	}
}
