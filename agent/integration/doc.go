// Package integration holds Ferry's fleet-level tests: in-process tests
// that run a real controller and several real agents over TLS on loopback
// (fleettest), and end-to-end tests that drive the built binaries as
// separate processes (e2e). It is its own module so that neither the agent
// nor the controller module depends on the other.
package integration
