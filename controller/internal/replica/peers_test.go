package replica_test

import (
	"context"
	"slices"
	"testing"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	"github.com/ferrydeploy/ferry/controller/internal/replica"
	"github.com/ferrydeploy/ferry/controller/internal/replica/replicatest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// The members reader lists the other controllers' member keys: not this
// controller's own, not a key that is not {id, addr}, and not one gone.
func TestMembersListsTheOtherControllers(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	cli := etcdtest.Client(t, eps)
	self := replica.Peer{ID: "a", Addr: "10.0.0.1:7443"}
	replicatest.PutMember(t, cli, prefix, self)
	replicatest.PutMember(t, cli, prefix, replica.Peer{ID: "b", Addr: "10.0.0.2:7443"})
	goneC := replicatest.PutMember(t, cli, prefix, replica.Peer{ID: "c", Addr: "10.0.0.3:7443"})
	if _, err := cli.Put(context.Background(), replica.MemberKey(prefix, "junk"), "not json"); err != nil {
		t.Fatal(err)
	}
	// Another installation's prefix sharing the etcd cluster is not read.
	_, other := etcdtest.Shared(t)
	replicatest.PutMember(t, cli, other, replica.Peer{ID: "x", Addr: "10.9.9.9:7443"})

	m := replica.NewMembers(cli, prefix, self, nil)
	addrs := func() []string {
		var out []string
		for _, p := range m.Peers() {
			out = append(out, p.Addr)
		}
		slices.Sort(out)
		return out
	}
	if got, want := addrs(), []string{"10.0.0.2:7443", "10.0.0.3:7443"}; !slices.Equal(got, want) {
		t.Fatalf("peers = %v, want %v", got, want)
	}
	goneC()
	if got, want := addrs(), []string{"10.0.0.2:7443"}; !slices.Equal(got, want) {
		t.Fatalf("peers after c went = %v, want %v", got, want)
	}
}
