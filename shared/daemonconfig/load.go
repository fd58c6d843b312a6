package daemonconfig

import (
	"errors"
	"io/fs"

	"github.com/spf13/pflag"
)

// Load applies the config file at path to flags (see File.Apply). When
// mustExist is false (path is the built-in default, not one the operator
// named) a missing file is no error: the flags' defaults stand.
func Load(path string, mustExist bool, flags *pflag.FlagSet, known func(string) bool) error {
	if path == "" {
		return nil
	}
	f, err := Read(path)
	if errors.Is(err, fs.ErrNotExist) && !mustExist {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Apply(flags, known)
}
