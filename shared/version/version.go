// Package version holds the build's version and commit, stamped by the
// Makefile with -ldflags "-X".
package version

import (
	"fmt"
	"runtime"
)

// Set at link time: -X github.com/ferrydeploy/ferry/shared/version.Version=...
var (
	Version = "dev"
	Commit  = "unknown"
)

// String is what every binary prints for --version.
func String(binary string) string {
	return fmt.Sprintf("%s %s (commit %s, %s, %s/%s)", binary, Version, Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
