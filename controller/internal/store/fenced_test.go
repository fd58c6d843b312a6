package store

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
)

func tokenIDs(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	toks, err := s.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, tok := range toks {
		ids[tok.ID] = true
	}
	return ids
}

// A store fenced on a leader key's revision writes while that key is the
// one it was given; once the key is another (a new leader's election), a
// write fails with ErrFenced and changes nothing.
func TestFencedWritesOnlyWhileTheFenceHolds(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	cli := etcdtest.Client(t, eps)
	s, err := OpenEtcd(cli, prefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leaderKey := prefix + "-leader"
	put, err := cli.Put(ctx, leaderKey, "c1")
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision // the key's create revision
	fenced := s.Fenced(func() ([]clientv3.Cmp, error) {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", rev)}, nil
	})
	exp := time.Now().Add(time.Hour)
	if err := fenced.PutToken(TokenRecord{ID: "lead01", Group: "web", ExpiresAt: exp}, nil); err != nil {
		t.Fatalf("write while the fence holds: %v", err)
	}
	// Another controller is elected: the key is deleted and created again.
	if _, err := cli.Delete(ctx, leaderKey); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, leaderKey, "c2"); err != nil {
		t.Fatal(err)
	}
	err = fenced.PutToken(TokenRecord{ID: "late01", Group: "web", ExpiresAt: exp}, nil)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("write after the leader key changed: %v; want ErrFenced", err)
	}
	ids := tokenIDs(t, s)
	if !ids["lead01"] || ids["late01"] {
		t.Errorf("tokens after the fenced write: %v; want lead01 only", ids)
	}
	// The store it was made from does not carry the fence.
	if err := s.PutToken(TokenRecord{ID: "free01", Group: "web", ExpiresAt: exp}, nil); err != nil {
		t.Errorf("write through the unfenced store: %v", err)
	}
}

// A fence that knows it cannot hold (the controller is cut off from etcd)
// refuses the write with its own error before the transaction reads
// anything: with etcd gone the caller gets that error, not etcd's.
func TestFencedRefusesBeforeReading(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenEtcd(cli, prefix)
	if err != nil {
		t.Fatal(err)
	}
	cutOff := errors.New("controller c1 lost its connection to etcd")
	calls := 0
	fenced := s.Fenced(func() ([]clientv3.Cmp, error) { calls++; return nil, cutOff })
	_ = cli.Close() // any read would fail now with the client's error
	err = fenced.PutToken(TokenRecord{ID: "cut001", Group: "web", ExpiresAt: time.Now().Add(time.Hour)}, nil)
	if !errors.Is(err, cutOff) {
		t.Fatalf("write through a refusing fence: %v; want the fence's error", err)
	}
	if calls == 0 {
		t.Error("the fence was not asked")
	}
}

// On bbolt there is one controller: Fenced is the store itself.
func TestFencedOnBboltIsTheStore(t *testing.T) {
	s := openBackend(t, "bbolt")
	fenced := s.Fenced(func() ([]clientv3.Cmp, error) { return nil, errors.New("never asked") })
	if fenced != s {
		t.Fatal("Fenced on bbolt returned another store")
	}
	if err := fenced.PutToken(TokenRecord{ID: "bolt01", Group: "web", ExpiresAt: time.Now().Add(time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
}
