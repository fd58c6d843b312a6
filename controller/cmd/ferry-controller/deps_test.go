package main

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/deptest"
)

// TestDepsLeaveOutTheEtcdServer: the controller is an etcd client; the
// etcd server (embedded by tests, package etcdtest) must never be linked
// into the binary, nor anything else only tests use.
func TestDepsLeaveOutTheEtcdServer(t *testing.T) {
	const self = "github.com/ferrydeploy/ferry/controller/cmd/ferry-controller"
	g := deptest.List(t, true, ".")
	if _, ok := g[self]; !ok {
		t.Fatalf("go list did not list %s", self)
	}
	if _, ok := g["go.etcd.io/etcd/client/v3"]; !ok {
		t.Fatal("ferry-controller does not link the etcd client; is go list looking at the right package?")
	}
	for _, p := range slices.Sorted(maps.Keys(g)) {
		for _, bad := range []string{"go.etcd.io/etcd/server", "go.etcd.io/raft", "github.com/ferrydeploy/ferry/controller/etcdtest"} {
			if deptest.Within(p, bad) {
				t.Errorf("ferry-controller links %s through %s; only tests may", p, strings.Join(g.Chain(self, p), " -> "))
			}
		}
	}
}
