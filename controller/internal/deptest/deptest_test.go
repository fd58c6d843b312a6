package deptest

import (
	"slices"
	"testing"
)

func TestChain(t *testing.T) {
	g := Graph{
		"cmd":    {"cli", "fmt"},
		"cli":    {"client", "store"},
		"client": {"store"},
		"store":  {"bbolt"},
	}
	cases := []struct {
		from, to string
		want     []string
	}{
		{"cmd", "bbolt", []string{"cmd", "cli", "store", "bbolt"}},
		{"cmd", "cmd", []string{"cmd"}},
		{"client", "cli", nil},
		{"cmd", "nowhere", nil},
	}
	for _, tc := range cases {
		if got := g.Chain(tc.from, tc.to); !slices.Equal(got, tc.want) {
			t.Errorf("Chain(%s, %s) = %v, want %v", tc.from, tc.to, got, tc.want)
		}
	}
}

func TestWithin(t *testing.T) {
	cases := []struct {
		path, prefix string
		want         bool
	}{
		{"go.etcd.io/bbolt", "go.etcd.io/bbolt", true},
		{"go.etcd.io/bbolt/errors", "go.etcd.io/bbolt", true},
		{"go.etcd.io/bboltx", "go.etcd.io/bbolt", false},
		{"github.com/prometheus/procfs", "github.com/prometheus", true},
	}
	for _, tc := range cases {
		if got := Within(tc.path, tc.prefix); got != tc.want {
			t.Errorf("Within(%q, %q) = %v, want %v", tc.path, tc.prefix, got, tc.want)
		}
	}
}

func TestListSeesImports(t *testing.T) {
	g := List(t, true, ".")
	self := "github.com/ferrydeploy/ferry/controller/internal/deptest"
	if !slices.Contains(g[self], "os/exec") {
		t.Fatalf("go list says %s imports %v; want os/exec among them", self, g[self])
	}
	if g.Chain(self, "os") == nil {
		t.Errorf("no chain from %s to os in the -deps graph", self)
	}
}
