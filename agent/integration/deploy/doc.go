// Package deploy tests the files under deployments/ that ship with Ferry:
// the systemd units are verified with systemd-analyze, and the flags their
// command lines use are checked against the built binaries.
package deploy
