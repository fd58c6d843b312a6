package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
)

// twoControllers opens two stores on one etcd prefix, each with its own
// client, as two controllers would.
func twoControllers(t *testing.T) (*Store, *Store) {
	t.Helper()
	eps, prefix := etcdtest.Shared(t)
	a, err := OpenEtcd(etcdtest.Client(t, eps), prefix)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenEtcd(etcdtest.Client(t, eps), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// Two controllers enroll with the same one-use token at the same moment:
// both read the token unused before either commits, and exactly one
// enrollment wins; the other is told the token is used up.
func TestEtcdOneUseTokenEnrollsOnce(t *testing.T) {
	a, b := twoControllers(t)
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := a.PutToken(TokenRecord{ID: "one001", Group: "web", ExpiresAt: now.Add(time.Hour), MaxUses: 1}, nil); err != nil {
		t.Fatal(err)
	}
	// Both first attempts wait here, after reading the token, until the
	// other has read it too.
	var arrived atomic.Int32
	both := make(chan struct{})
	build := func(id string) func(TokenRecord) (NodeRecord, error) {
		return func(TokenRecord) (NodeRecord, error) {
			if n := arrived.Add(1); n == 2 {
				close(both)
			} else if n < 2 {
				select {
				case <-both:
				case <-time.After(10 * time.Second):
					return NodeRecord{}, errors.New("the other enrollment never read the token")
				}
			}
			return NodeRecord{ID: id, Group: "web"}, nil
		}
	}
	ok := func(TokenRecord) error { return nil }
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, s := range []*Store{a, b} {
		wg.Go(func() {
			// No audit entry: the token's own compare must decide.
			_, errs[i] = s.EnrollNode("one001", ok, now, build(fmt.Sprintf("node-%d", i)), nil)
		})
	}
	wg.Wait()
	won, lost := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, ErrTokenUnusable) && strings.Contains(err.Error(), "used up"):
			lost++
		default:
			t.Fatalf("enrollment failed otherwise: %v", err)
		}
	}
	if won != 1 || lost != 1 {
		t.Fatalf("%d enrollments won and %d were told the token is used up, want 1 and 1 (%v)", won, lost, errs)
	}
	nodes, err := b.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	toks, err := a.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || len(toks) != 1 || toks[0].Uses != 1 {
		t.Fatalf("after the race: nodes %v, token uses %d; want one node and 1 use", nodes, toks[0].Uses)
	}
}

// Many enrollments on two controllers with a three-use token: exactly
// three nodes, three uses, three audit entries with distinct sequence
// numbers, whatever the interleaving.
func TestEtcdTokenUsesAreCountedAcrossControllers(t *testing.T) {
	a, b := twoControllers(t)
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := a.PutToken(TokenRecord{ID: "three01", Group: "web", ExpiresAt: now.Add(time.Hour), MaxUses: 3}, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var won atomic.Int32
	for i := range 8 {
		s := []*Store{a, b}[i%2]
		wg.Go(func() {
			_, err := s.EnrollNode("three01", func(TokenRecord) error { return nil }, now, func(TokenRecord) (NodeRecord, error) {
				return NodeRecord{ID: fmt.Sprintf("n%d", i)}, nil
			}, &ferryv1.AuditEvent{Actor: "node", Action: "enroll", Target: fmt.Sprintf("n%d", i), Outcome: "ok"})
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, ErrTokenUnusable):
				t.Errorf("enroll n%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	nodes, _ := a.Nodes()
	toks, _ := b.Tokens()
	evs, _ := b.AuditEvents(0)
	targets := map[string]bool{}
	for _, ev := range evs {
		targets[ev.GetTarget()] = true
	}
	if won.Load() != 3 || len(nodes) != 3 || toks[0].Uses != 3 || len(evs) != 3 || len(targets) != 3 {
		t.Fatalf("won %d, nodes %d, uses %d, audit entries %d (%d targets); want 3 of each", won.Load(), len(nodes), toks[0].Uses, len(evs), len(targets))
	}
}

// A transaction that scanned a bucket runs again when another controller
// deletes a key of it before the commit: etcd compares cannot see a
// deleted key, the bucket's version key does.
func TestEtcdRangeReadSeesAConcurrentDelete(t *testing.T) {
	a, b := twoControllers(t)
	for _, v := range []string{"1", "2", "3"} {
		if err := a.PutArtifact(&ferryv1.Artifact{Name: "go", Version: v, Digest: "sha256:aa"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	runs := 0
	err := a.kv.Update(func(tx kvTx) error {
		runs++
		n := 0
		if err := forEachKV(tx.Bucket(bucketArtifacts), func(_, _ []byte) error { n++; return nil }); err != nil {
			return err
		}
		if runs == 1 {
			if _, err := b.DeleteArtifact(VersionKey("go", "2"), nil); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put([]byte("count"), fmt.Appendf(nil, "%d", n))
	})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	_ = b.kv.View(func(tx kvTx) error { got = string(tx.Bucket(bucketMeta).Get([]byte("count"))); return nil })
	if runs != 2 || got != "2" {
		t.Fatalf("the transaction ran %d times and wrote count %s; want it run again after the delete and count 2", runs, got)
	}
}

// With etcd gone a write fails with an error an operator can act on, not
// a raw deadline.
func TestEtcdUnreachableSaysSo(t *testing.T) {
	srv, err := etcdtest.StartServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenEtcd(etcdtest.Client(t, srv.Endpoints), "/ferry")
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	err = s.PutToken(TokenRecord{ID: "t1", ExpiresAt: time.Now().Add(time.Hour)}, nil)
	want := "etcd at " + srv.Endpoints[0] + " unreachable"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "refuses writes until it is back") || strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("write with etcd down: %v; want it to say %q and that writes are refused", err, want)
	}
}

// A controller following a domain hears of another controller's write to
// it, and not of writes elsewhere.
func TestEtcdFollowHearsOtherControllersWrites(t *testing.T) {
	a, b := twoControllers(t)
	changed := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Follow(ctx, "revoked_admins", func() { changed <- struct{}{} })
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(200 * time.Millisecond) // let the watch start; a write before it is not what this tests
	if err := a.PutToken(TokenRecord{ID: "t1", ExpiresAt: time.Now().Add(time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeAdmin("bob", time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower never heard of the revocation")
	}
	got, err := b.RevokedAdmins()
	if err != nil || got["bob"].IsZero() {
		t.Fatalf("revocations on the other controller: %v, %v", got, err)
	}
	select {
	case <-changed:
		t.Error("the follower heard of more than the one revocation (the token is another domain)")
	case <-time.After(300 * time.Millisecond):
	}
}

// Batch calls made at once share transactions; one call that fails gets
// its own error and the others' writes are all stored.
func TestEtcdBatchSharesTransactionsAndKeepsErrorsApart(t *testing.T) {
	s := openBackend(t, "etcd")
	e := s.kv.(*etcdKV)
	rev := func() int64 {
		resp, err := e.cli.Get(context.Background(), e.prefix+"/")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	before := rev()
	const n = 100
	errs := make(chan error, n)
	refused := errors.New("refused")
	for i := range n {
		go func() {
			errs <- e.Batch(func(tx kvTx) error {
				if i == 42 {
					return refused
				}
				return tx.Bucket(bucketMeta).Put([]byte(fmt.Sprintf("batch-%03d", i)), []byte("x"))
			})
		}()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			if !errors.Is(err, refused) {
				t.Fatalf("batch call: %v", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d calls failed, want 1", failed)
	}
	stored := 0
	err := s.kv.View(func(tx kvTx) error {
		stored = 0
		return tx.Bucket(bucketMeta).Scan([]byte("batch-"), func(k, _ []byte) (bool, error) {
			if strings.HasPrefix(string(k), "batch-") {
				stored++
			}
			return true, nil
		})
	})
	if err != nil || stored != n-1 {
		t.Fatalf("%d records stored (%v), want %d", stored, err, n-1)
	}
	if txns := rev() - before; txns >= n-1 {
		t.Errorf("%d write transactions for %d batch calls; want them shared", txns, n-1)
	}
}
