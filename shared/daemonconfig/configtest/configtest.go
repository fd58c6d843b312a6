// Package configtest checks a daemon's example config file against its
// flags, for the daemons' tests.
package configtest

import (
	"os"
	"regexp"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/shared/daemonconfig"
)

// exampleKey matches a commented-out key line of an example config.
var exampleKey = regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]*):`)

// CheckExample walks the flags newFlags defines (with their defaults):
// each flag a file may set must have a commented "#key: default" line in
// the example at path; the example must name no other key; and with
// every such line uncommented it must parse and change no default. Flags
// kept out of files must be among commandLineOnly (besides --config,
// --help and --version), so keeping one out is a decision the test names.
func CheckExample(t *testing.T, path string, newFlags func() *pflag.FlagSet, commandLineOnly ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range exampleKey.FindAllStringSubmatch(string(data), -1) {
		documented[m[1]] = true
	}
	defaults := newFlags()
	for _, k := range daemonconfig.Keys(defaults) {
		if !documented[k] {
			t.Errorf("flag --%s has no key in %s: add a commented %q line with its default and meaning", k, path, "#"+k+":")
		}
		delete(documented, k)
	}
	for k := range documented {
		t.Errorf("%s documents %q, which is no flag", path, k)
	}
	allowed := map[string]bool{"config": true, "help": true, "version": true}
	for _, n := range commandLineOnly {
		allowed[n] = true
	}
	defaults.VisitAll(func(fl *pflag.Flag) {
		if daemonconfig.CommandLineOnly(fl) && !allowed[fl.Name] {
			t.Errorf("--%s is kept out of the config file unexpectedly", fl.Name)
		}
	})

	uncommented := exampleKey.ReplaceAllString(string(data), "$1:")
	f, err := daemonconfig.Parse(path, []byte(uncommented))
	if err != nil {
		t.Fatalf("%s with its keys uncommented: %v", path, err)
	}
	applied := newFlags()
	if err := f.Apply(applied, nil); err != nil {
		t.Fatalf("%s with its keys uncommented: %v", path, err)
	}
	for _, c := range daemonconfig.Changes(defaults, applied) {
		t.Errorf("%s shows %s = %s, but the default is %s", path, c.Key, c.New, c.Old)
	}
}
