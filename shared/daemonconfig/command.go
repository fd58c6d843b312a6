package daemonconfig

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// UsageError is a command line or config file a daemon cannot run with:
// exit code 2, as for a flag it does not know.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Execute runs a daemon's root command with args and returns the exit
// code: 0, 2 for a UsageError (flag errors included, see FlagError), 1
// for any other error, which is printed as "name: error".
func Execute(root *cobra.Command, name string, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetFlagErrorFunc(FlagError)
	root.CompletionOptions.DisableDefaultCmd = true
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	var ue UsageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// FlagError makes a flag parse error a UsageError (cobra's
// SetFlagErrorFunc); subcommands inherit it from the root.
func FlagError(_ *cobra.Command, err error) error { return Usage(err) }

// Usage marks err as a UsageError.
func Usage(err error) error { return UsageError{Err: err} }
