package controller

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
)

// copyCA puts the installation's CA of from into a new data dir, as the
// join step does.
func copyCA(t *testing.T, from string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Joining other controllers is explicit: a data dir holding only a CA is
// not a first start, so beside an etcd prefix without a store (a typo, a
// wiped prefix) it is refused as a lost store, naming --join; --join is
// refused where there is nothing to join, without the CA, and on bbolt,
// where a CA without ferry.db stays a lost store. A refused start writes
// nothing to etcd. With --join on the others' store it starts.
func TestJoiningIsExplicit(t *testing.T) {
	dir1 := t.TempDir()
	_, stop := start(t, testConfig(dir1)) // makes the installation's CA
	stop()
	caOnly := copyCA(t, dir1)
	cfg := etcdConfig(t, caOnly)
	cfg.ControllerID = "c2"
	prefix := cfg.Store.Etcd.KeyPrefix()
	keys := func() int64 {
		t.Helper()
		resp, err := etcdtest.Client(t, cfg.Store.Etcd.Endpoints).Get(context.Background(), prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}

	refused := func(name string, cfg Config, want ...string) {
		t.Helper()
		c, err := New(cfg)
		if err == nil {
			_ = c.Close()
			t.Errorf("%s: the controller started", name)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\nwant it to say %q", name, err, w)
			}
		}
	}
	refused("a CA-only data dir beside an empty prefix", cfg,
		"etcd prefix "+prefix+" at "+cfg.Store.Etcd.Endpoints[0]+" holds no store, but "+caOnly+" holds the CA certificate (ca.crt), the CA key (ca.key) from earlier runs",
		"a controller joining others must use their --etcd-endpoints and --etcd-prefix, and --join")
	join := cfg
	join.Join = true
	refused("--join on an empty prefix", join,
		"--join: etcd prefix "+prefix+" at "+cfg.Store.Etcd.Endpoints[0]+" holds no store, so there are no controllers to join there")
	if n := keys(); n != 0 {
		t.Fatalf("the refused starts left %d keys under %s; a later start would take them for a store", n, prefix)
	}
	bbolt := testConfig(caOnly)
	bbolt.Join = true
	refused("--join on bbolt", bbolt, "--join: a controller joins others that share one etcd store: add --store etcd")
	refused("a CA-only data dir on bbolt", testConfig(caOnly), "holds the CA certificate (ca.crt), the CA key (ca.key) from earlier runs", "Restore it from a backup")

	// The installation's first controller on etcd, then the joiner.
	first := etcdConfig(t, t.TempDir())
	first.Store.Etcd = cfg.Store.Etcd
	first.ControllerID = "c1"
	c1, _ := start(t, first)
	createToken(t, adminConn(t, c1), "staging") // a record: the store is in use
	noCA := join
	noCA.DataDir = t.TempDir()
	refused("--join without the CA", noCA, "--join: "+noCA.DataDir+" does not hold the installation's CA: copy ca.crt, ca.key and gossip.key")
	fresh := noCA
	fresh.Join = false
	refused("an empty data dir on the installation's store", fresh, "holds no CA: this controller would make a CA of its own", "start with --join")

	join.DataDir = copyCA(t, first.DataDir)
	c2, _ := start(t, join)
	if c2.CAPin() != c1.CAPin() {
		t.Errorf("the joiner's CA %s is not the installation's %s", c2.CAPin(), c1.CAPin())
	}
	if toks, err := c2.store.Tokens(); err != nil || len(toks) != 1 {
		t.Errorf("the joiner's store has tokens %v, %v; want c1's one", toks, err)
	}
}
