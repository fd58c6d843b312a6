// Package replicatest writes the member keys package replica reads, for
// tests that run several controllers on one etcd before controller
// membership writes them itself.
package replicatest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/internal/replica"
)

// PutMember writes p's member key under prefix; it is removed when t ends
// (or earlier with the returned function: the controller "went down").
func PutMember(t testing.TB, cli *clientv3.Client, prefix string, p replica.Peer) (remove func()) {
	t.Helper()
	v, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	key := replica.MemberKey(prefix, p.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, string(v)); err != nil {
		t.Fatalf("write member key %s: %v", key, err)
	}
	remove = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Delete(ctx, key); err != nil {
			t.Errorf("remove member key %s: %v", key, err)
		}
	}
	t.Cleanup(remove)
	return remove
}
