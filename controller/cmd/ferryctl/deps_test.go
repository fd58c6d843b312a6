package main

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/deptest"
)

const module = "github.com/ferrydeploy/ferry/controller"

// badDeps are what the admin CLI must not link, and why: it talks to the
// controller over gRPC and needs none of the controller's machinery.
var badDeps = map[string]string{
	"go.etcd.io/bbolt":                           "the controller's database",
	"github.com/prometheus":                      "the controller's metrics",
	"github.com/hashicorp/memberlist":            "gossip",
	"github.com/ferrydeploy/ferry/shared/gossip": "gossip",
}

// clientPackages are the module's packages ferryctl may link. The others
// (controller, internal/server, store, artifact, packages, rollout, fleet,
// health, metrics, ...) are the controller's server side; a package the
// CLI comes to need must be client code, and is added here on purpose.
var clientPackages = map[string]bool{
	module + "/cmd/ferryctl":          true,
	module + "/internal/cli":          true,
	module + "/internal/credential":   true, // the admin credential file
	module + "/internal/mirror":       true, // mirror layouts and URLs, checked on both sides
	module + "/internal/nodestate":    true, // node state words
	module + "/internal/pkgspec":      true, // package file parser, for file:line errors
	module + "/internal/pushclient":   true, // the client side of an artifact push
	module + "/internal/rolloutstate": true, // which rollout states are final
}

// TestDeps fails when ferryctl links server code or its dependencies
// (after Tailscale's tstest/deptest).
func TestDeps(t *testing.T) {
	const self = module + "/cmd/ferryctl"
	g := deptest.List(t, true, ".")
	if _, ok := g[self]; !ok {
		t.Fatalf("go list did not list %s", self)
	}
	reported := map[string]bool{}
	for _, p := range slices.Sorted(maps.Keys(g)) {
		for bad, why := range badDeps {
			if deptest.Within(p, bad) && !reported[bad] {
				reported[bad] = true
				t.Errorf("ferryctl links %s, %s, through %s; move what the CLI needs into a client-side package", p, why, strings.Join(g.Chain(self, p), " -> "))
			}
		}
		if strings.HasPrefix(p, module+"/") && !clientPackages[p] {
			t.Errorf("ferryctl links %s, a server-side package, through %s; move what the CLI needs into a client-side package (or, if %s is client code, add it to clientPackages)", p, strings.Join(g.Chain(self, p), " -> "), p)
		}
	}
}
