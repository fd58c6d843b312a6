package server

import (
	"maps"
	"slices"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/deptest"
)

const module = "github.com/ferrydeploy/ferry/controller"

// TestOnlyServerMakesStatusErrors keeps gRPC status errors at the one gRPC
// layer: no package of the module but this one and the CLI (a gRPC client)
// imports grpc's status or codes
// (etcdclient only reads the etcd client's codes). The domain packages return sentinel or
// typed errors instead, which errors.go maps to codes.
func TestOnlyServerMakesStatusErrors(t *testing.T) {
	allowed := map[string]bool{
		module + "/internal/server": true,
		module + "/internal/cli":    true,
		// etcd's client speaks gRPC: etcdclient reads its codes to tell
		// "etcd did not answer" from a refusal (IsUnreachable) and makes none.
		module + "/internal/etcdclient": true,
		// replica is a client of the other controllers' ReplicaService:
		// it reads their status messages (to say them in words) and makes none.
		module + "/internal/replica": true,
		// cluster serves ClusterService (relay.go), controller to
		// controller: a gRPC server of its own, as this package is.
		module + "/internal/cluster": true,
	}
	g := deptest.List(t, false, module+"/...")
	if _, ok := g[module+"/internal/server"]; !ok {
		t.Fatalf("go list did not list %s/internal/server", module)
	}
	for _, pkg := range slices.Sorted(maps.Keys(g)) {
		if allowed[pkg] {
			continue
		}
		for _, imp := range g[pkg] {
			if imp == "google.golang.org/grpc/status" || imp == "google.golang.org/grpc/codes" {
				t.Errorf("%s imports %s: return a sentinel or typed error instead, and give it its code in internal/server/errors.go", pkg, imp)
			}
		}
	}
}
