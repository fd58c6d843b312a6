package store

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
)

// The domain tests run against both backends; one embedded etcd serves the
// whole package, each store on a prefix of its own.
func TestMain(m *testing.M) { etcdtest.Main(m) }

var backends = []string{"bbolt", "etcd"}

// openBackend opens a new, empty store on backend for t.
func openBackend(t *testing.T, backend string) *Store {
	t.Helper()
	var s *Store
	var err error
	switch backend {
	case "bbolt":
		s, err = Open(filepath.Join(t.TempDir(), "ferry.db"), Options{Create: true})
	case "etcd":
		eps, prefix := etcdtest.Shared(t)
		s, err = OpenEtcd(etcdtest.Client(t, eps), prefix)
	default:
		t.Fatalf("no backend %q", backend)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// eachBackend runs fn as a subtest per backend.
func eachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}

// dumpEtcd is every key and value under an etcd store's prefix.
func dumpEtcd(t *testing.T, s *Store) string {
	t.Helper()
	e := s.kv.(*etcdKV)
	resp, err := e.cli.Get(context.Background(), e.prefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%q=%x\n", kv.Key, kv.Value)
	}
	return b.String()
}
