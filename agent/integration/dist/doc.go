// Package dist tests Ferry's release bundles as an operator uses them:
// `make dist` (deployments/dist/dist.sh) builds the linux/amd64 bundle, the
// tests check what is in it and that a second build gives the same bytes,
// and run the bundle's install.sh into temporary roots (--root): checksums
// and the signature checked, a tampered bundle refused, owners and modes,
// a second run that changes nothing, an upgrade that keeps the state, and
// a controller and three agents installed, started from their installed
// config files and given the Go toolchain in a rollout.
//
// The bundle is built once per test binary (about a minute on two cores).
// Like the end-to-end tests, these run only with FERRY_BIN set (make test,
// make e2e).
package dist
