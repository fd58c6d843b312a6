// Package deptest lets tests check what Go packages import and link, so
// that layering rules (ferryctl links no server code; only the gRPC layer
// makes status errors) are kept by tests rather than by review alone. It
// follows Tailscale's tstest/deptest, and is imported by tests only.
package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// Graph maps packages to the packages they import directly, tests left
// out.
type Graph map[string][]string

// List returns the import graph of the packages patterns name, as `go
// list` run in the current directory sees them; with deps, of every
// package they link as well.
func List(t testing.TB, deps bool, patterns ...string) Graph {
	t.Helper()
	args := []string{"list", "-json=ImportPath,Imports"}
	if deps {
		args = append(args, "-deps")
	}
	cmd := exec.Command("go", append(args, patterns...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, stderr.Bytes())
	}
	g := Graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go %s: %v", strings.Join(cmd.Args[1:], " "), err)
		}
		g[p.ImportPath] = p.Imports
	}
	if len(g) == 0 {
		t.Fatalf("go %s listed no packages", strings.Join(cmd.Args[1:], " "))
	}
	return g
}

// Chain is the shortest import chain in g from one package to another,
// both included; nil when from does not link to.
func (g Graph) Chain(from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append([]string{p}, chain...)
			}
			return chain
		}
		for _, imp := range g[p] {
			if _, seen := prev[imp]; !seen {
				prev[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return nil
}

// Within reports whether path is prefix or a package below it
// ("go.etcd.io/bbolt" holds "go.etcd.io/bbolt/errors").
func Within(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}
