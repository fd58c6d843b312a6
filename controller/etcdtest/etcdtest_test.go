package etcdtest_test

import (
	"context"
	"testing"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	"github.com/ferrydeploy/ferry/controller/internal/etcdclient"
)

func TestStartServesAndEtcdclientConnects(t *testing.T) {
	eps, cli := etcdtest.Start(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/ferry/x", "1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c2, err := etcdclient.New(ctx, etcdclient.Config{Endpoints: eps})
	if err != nil {
		t.Fatalf("etcdclient.New: %v", err)
	}
	defer func() { _ = c2.Close() }()
	got, err := c2.Get(ctx, "/ferry/x")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "1" {
		t.Fatalf("get through etcdclient: %v %v", got, err)
	}
}

func TestEtcdclientUnreachableSaysSo(t *testing.T) {
	_, err := etcdclient.New(context.Background(), etcdclient.Config{Endpoints: []string{"http://127.0.0.1:1"}})
	if err == nil {
		t.Fatal("connected to a port nobody listens on")
	}
	want := "etcd at http://127.0.0.1:1 unreachable"
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Fatalf("error %q does not start with %q", got, want)
	}
}
