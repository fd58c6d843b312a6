package controller

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// etcdConfig is testConfig with the store on the shared test etcd, under a
// prefix of its own.
func etcdConfig(t *testing.T, dataDir string) Config {
	t.Helper()
	eps, prefix := etcdtest.Shared(t)
	cfg := testConfig(dataDir)
	cfg.Store.Backend = StoreEtcd
	cfg.Store.Etcd.Endpoints = eps
	cfg.Store.Etcd.Prefix = prefix
	return cfg
}

// A controller that ran on bbolt is migrated into etcd with the command
// line and started on etcd with the same data dir: it has every record.
// A second migrate into the same prefix is refused unless told to
// overwrite; backup on etcd says to use etcdctl.
func TestMigrateToEtcdThenRunOnIt(t *testing.T) {
	dir := t.TempDir()
	c, stop := start(t, testConfig(dir))
	conn := adminConn(t, c)
	tokens := []string{createToken(t, conn, "production"), createToken(t, conn, "staging")}
	if _, err := ferryv1.NewPackageServiceClient(conn).ApplyPackage(context.Background(), &ferryv1.ApplyPackageRequest{
		Filename: "motd.yaml", Yaml: "name: motd\nversion: \"1\"\nsteps:\n  - check: {run: \"true\"}\n",
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.store.PutNode(store.NodeRecord{ID: "web-01", Group: "production", TokenID: tokens[0]}, nil); err != nil {
		t.Fatal(err)
	}
	// While the controller runs, its store is locked: migrate says so.
	cfg := etcdConfig(t, dir)
	to := "etcd:" + strings.Join(cfg.Store.Etcd.Endpoints, ",")
	args := []string{"migrate", "--from", "bbolt:" + dir, "--to", to, "--etcd-prefix", cfg.Store.Etcd.Prefix}
	if code, _, errOut := main(t, args...); code != 1 || !strings.Contains(errOut, "stop the controller before migrating") {
		t.Errorf("migrate while running: exit %d: %s", code, errOut)
	}
	stop()

	code, out, errOut := main(t, args...)
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s%s", code, out, errOut)
	}
	t.Logf("ferry-controller %s:\n%s", strings.Join(args, " "), out)
	m := regexp.MustCompile(`migrate check: (\d+) records identical`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || !regexp.MustCompile(`tokens:\s+2\n`).MatchString(out) || !regexp.MustCompile(`nodes:\s+1\n`).MatchString(out) {
		t.Fatalf("migrate output does not count 2 tokens, 1 node and the records checked:\n%s", out)
	}
	if code, _, errOut := main(t, args...); code != 1 || !strings.Contains(errOut, "already holds a store (1 node, 2 tokens") || !strings.Contains(errOut, "--overwrite") {
		t.Errorf("second migrate into the same prefix: exit %d: %s", code, errOut)
	}
	if code, out, errOut := main(t, append(args, "--overwrite")...); code != 0 || !strings.Contains(out, "migrate check: "+m[1]+" records identical") {
		t.Errorf("migrate --overwrite: exit %d: %s%s", code, out, errOut)
	}

	c, stop = start(t, cfg)
	got, err := c.store.Tokens()
	if err != nil || len(got) != 2 {
		t.Fatalf("tokens on etcd: %v, %v; want the 2 migrated", got, err)
	}
	if n, ok := c.fleet.Node("web-01"); !ok || n.GetGroup() != "production" {
		t.Errorf("the controller on etcd does not know web-01: %v", n)
	}
	if p, err := c.packages.Package("motd", "1"); err != nil || p.GetCreatedBy() != "admin/admin" {
		t.Errorf("package on etcd = %v, %v", p, err)
	}
	createToken(t, adminConn(t, c), "after")
	if got, _ := c.store.Tokens(); len(got) != 3 {
		t.Errorf("after one more token the etcd store has %d, want 3", len(got))
	}
	stop()

	if code, _, errOut := main(t, "backup", "--data-dir", dir, "--store", "etcd", "--out", filepath.Join(t.TempDir(), "b.db")); code != 1 || !strings.Contains(errOut, "etcdctl snapshot save") {
		t.Errorf("backup of an etcd store: exit %d: %s; want it to point to etcdctl snapshot save", code, errOut)
	}
}

// Switching a data dir that holds a CA and a store to an empty etcd
// prefix is refused with the migrate command to run, as a lost ferry.db
// is.
func TestEtcdStoreRefusesAnEmptyPrefixBesideEarlierState(t *testing.T) {
	dir := t.TempDir()
	_, stop := start(t, testConfig(dir))
	stop()
	cfg := etcdConfig(t, dir)
	_, err := New(cfg)
	if err == nil || !strings.Contains(err.Error(), "ferry-controller migrate --from bbolt:"+dir) || !strings.Contains(err.Error(), "holds no store") {
		t.Fatalf("New on an empty etcd prefix beside a used data dir: %v; want the migrate command", err)
	}
	// A first start (empty data dir) on etcd creates the store.
	c, _ := start(t, etcdConfig(t, t.TempDir()))
	if !c.store.OnEtcd() {
		t.Fatal("the controller did not open the etcd store")
	}
}
