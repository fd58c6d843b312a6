package store

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func testRollout(id string, n int) *ferryv1.Rollout {
	r := &ferryv1.Rollout{Id: id, PackageName: "go", PackageVersion: "1.22.0", State: ferryv1.RolloutState_ROLLOUT_STATE_RUNNING, Message: "starting"}
	for i := range n {
		r.Nodes = append(r.Nodes, &ferryv1.NodeJob{NodeId: fmt.Sprintf("n-%05d", i), Wave: 1, Outcome: ferryv1.NodeOutcome_NODE_OUTCOME_PENDING})
	}
	return r
}

// finish gives node i the record a finished install leaves (about 350
// bytes with its step results).
func finish(r *ferryv1.Rollout, i int) {
	nj := r.Nodes[i]
	nj.JobId, nj.Outcome, nj.Message = fmt.Sprintf("job-%s-%05d-0123456789abcdef", r.GetId(), i), ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED, "installed 1.22.0"
	nj.Steps = nil
	for k, kind := range []string{"archive", "env", "sudoers", "check"} {
		nj.Steps = append(nj.Steps, &ferryv1.StepResult{Index: uint32(k), Kind: kind, Name: kind + " -> /usr/local/go/step", Changed: true, Detail: "installed go 1.22.0 on this node"})
	}
}

func loadRollout(t *testing.T, s *Store, id string) *ferryv1.Rollout {
	t.Helper()
	all, err := s.Rollouts()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.GetId() == id {
			return r
		}
	}
	t.Fatalf("rollout %s not stored (%d rollouts)", id, len(all))
	return nil
}

func wantRollout(t *testing.T, s *Store, want *ferryv1.Rollout) {
	t.Helper()
	got := loadRollout(t, s, want.GetId())
	if !proto.Equal(got, want) {
		t.Fatalf("stored rollout %s differs from the one saved: %d nodes, want %d", want.GetId(), len(got.GetNodes()), len(want.GetNodes()))
	}
}

// rawChunks is every chunk key of a rollout with its value.
func rawChunks(t *testing.T, s *Store, id string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := s.kv.View(func(tx kvTx) error {
		out = map[string]string{}
		return forEachKV(tx.Bucket(bucketRolloutNodes), func(k, v []byte) error {
			if len(k) > len(id) && string(k[:len(id)+1]) == id+"/" {
				out[string(k)] = string(v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A rollout reads back as it was saved through creation, node updates, a
// node list that grows and shrinks, and a save with no change; the header
// holds no nodes and one node's update changes one chunk.
func TestRolloutChunks(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		s := openBackend(t, backend)
		r := testRollout("ro-1", 1000)
		if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, r)
		before := rawChunks(t, s, "ro-1")
		if want := (1000 + minChunk - 1) / minChunk; len(before) != want {
			t.Fatalf("%d chunks for 1000 nodes, want %d", len(before), want)
		}
		err := s.kv.View(func(tx kvTx) error {
			h, err := get[ferryv1.Rollout](tx.Bucket(bucketRollouts), "rollout", "ro-1")
			if err == nil && len(h.GetNodes()) != 0 {
				t.Errorf("the header holds %d nodes, want none", len(h.GetNodes()))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}

		finish(r, 500)
		r.Message = "1 of 1000 done"
		if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, r)
		after := rawChunks(t, s, "ro-1")
		var changed []string
		for k, v := range after {
			if before[k] != v {
				changed = append(changed, k)
			}
		}
		if len(changed) != 1 || changed[0] != chunkKey("ro-1", 500/minChunk) {
			t.Fatalf("one node's update changed chunks %v, want only %s", changed, chunkKey("ro-1", 500/minChunk))
		}

		// Fewer nodes: the chunks past the end go; more: they come back.
		small := proto.CloneOf(r)
		small.Nodes = small.Nodes[:40]
		if err := s.SaveRollout(proto.CloneOf(small), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, small)
		if n := len(rawChunks(t, s, "ro-1")); n != 2 {
			t.Fatalf("%d chunks for 40 nodes, want 2", n)
		}
		if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, r)
		if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, r)

		// Another rollout's chunks are its own.
		other := testRollout("ro-10", 3)
		if err := s.SaveRollout(proto.CloneOf(other), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, r)
		wantRollout(t, s, other)
		empty := testRollout("ro-2", 0)
		if err := s.SaveRollout(proto.CloneOf(empty), nil); err != nil {
			t.Fatal(err)
		}
		wantRollout(t, s, empty)
	})
}

// A save after another controller saved the same rollout writes every
// chunk that differs from what is stored, not from what this controller
// wrote last.
func TestRolloutSaveAfterAnotherControllers(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	a, err := OpenEtcd(etcdtest.Client(t, eps), prefix)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenEtcd(etcdtest.Client(t, eps), prefix)
	if err != nil {
		t.Fatal(err)
	}
	r := testRollout("ro-1", 200)
	if err := a.SaveRollout(proto.CloneOf(r), nil); err != nil {
		t.Fatal(err)
	}
	byB := proto.CloneOf(r)
	finish(byB, 5)
	byB.Message = "b leads"
	if err := b.SaveRollout(byB, nil); err != nil {
		t.Fatal(err)
	}
	mine := proto.CloneOf(r)
	finish(mine, 150)
	if err := a.SaveRollout(proto.CloneOf(mine), nil); err != nil {
		t.Fatal(err)
	}
	wantRollout(t, a, mine)
	wantRollout(t, b, mine)
}

// The rollout to 5,000 nodes the issue-16 benchmark found failing: once
// its nodes had reported their steps the record was larger than etcd's
// request limit. Chunked, every node finishes and each save stays small.
func TestRolloutOf5000NodesOnEtcd(t *testing.T) {
	t.Parallel() // the package's longest: it overlaps the others
	s := openBackend(t, "etcd")
	const n = 5000
	r := testRollout("ro-big", n)
	if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
		t.Fatal(err)
	}
	// Ten saves of 500 finished nodes each (ten chunks a save).
	const step = 500
	for from := 0; from < n; from += step {
		for i := from; i < min(from+step, n); i++ {
			finish(r, i)
		}
		if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
			t.Fatalf("save after %d nodes finished: %v", from+step, err)
		}
	}
	wantRollout(t, s, r)
	whole, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	largest := 0
	for _, v := range rawChunks(t, s, "ro-big") {
		largest = max(largest, len(v))
	}
	t.Logf("rollout of %d finished nodes: %d bytes as one record; chunks of %d nodes, the largest %d bytes", n, len(whole), chunkSize(n), largest)
	if len(whole) <= 1572864 {
		t.Errorf("the finished rollout is %d bytes as one record; this test wants one above etcd's 1.5 MiB request limit", len(whole))
	}
	// Format 2 wrote it as one record: etcd refuses that save.
	err = s.kv.Update(func(tx kvTx) error { return tx.Bucket(bucketRollouts).Put([]byte("ro-whole"), whole) })
	if err == nil || !strings.Contains(err.Error(), "refused a request as too large") {
		t.Errorf("saving the rollout as one record of %d bytes: %v; want etcd to refuse it as too large", len(whole), err)
	}
	if largest > 64<<10 {
		t.Errorf("the largest chunk is %d bytes, want at most 64 KiB", largest)
	}
}

// A format 2 bbolt store (each rollout one record with its nodes) opens
// as format 3: the records split, every node kept.
func TestOpenSplitsFormat2Rollouts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := Open(path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	r := testRollout("ro-old", 150)
	finish(r, 7)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketRolloutNodes); err != nil {
			return err
		}
		if err := put(boltBucket{tx.Bucket(bucketRollouts)}, "rollout", r.GetId(), r); err != nil {
			return err
		}
		return setSchema(tx.Bucket(bucketMeta), schemaProto)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantRollout(t, s, r)
	if n := len(rawChunks(t, s, "ro-old")); n != (150+minChunk-1)/minChunk {
		t.Fatalf("%d chunks after the split, want %d", n, (150+minChunk-1)/minChunk)
	}
	err = s.kv.View(func(tx kvTx) error {
		if v := tx.Bucket(bucketMeta).Get(schemaKey); len(v) != 8 || v[7] != schemaCurrent {
			t.Errorf("schema marker %x after the split, want %d", v, schemaCurrent)
		}
		h, err := get[ferryv1.Rollout](tx.Bucket(bucketRollouts), "rollout", "ro-old")
		if err == nil && len(h.GetNodes()) != 0 {
			t.Errorf("the header still holds %d nodes", len(h.GetNodes()))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An etcd store of format 2 is read as it is (a rollout with its nodes
// inside) and split at the rollout's next save; its marker says 3.
func TestEtcdFormat2RolloutIsSplitAtItsNextSave(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	cli := etcdtest.Client(t, eps)
	s, err := OpenEtcd(cli, prefix)
	if err != nil {
		t.Fatal(err)
	}
	r := testRollout("ro-old", 70)
	err = s.kv.Update(func(tx kvTx) error {
		if err := put(tx.Bucket(bucketRollouts), "rollout", r.GetId(), r); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(schemaKey, []byte{0, 0, 0, 0, 0, 0, 0, schemaProto})
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err = OpenEtcd(cli, prefix)
	if err != nil {
		t.Fatal(err)
	}
	wantRollout(t, s, r)
	resp, err := cli.Get(context.Background(), prefix+"/meta/!k/schema")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Value[7] != schemaCurrent {
		t.Fatalf("schema marker after opening: %v, %v; want %d", resp, err, schemaCurrent)
	}
	finish(r, 3)
	if err := s.SaveRollout(proto.CloneOf(r), nil); err != nil {
		t.Fatal(err)
	}
	wantRollout(t, s, r)
	if n := len(rawChunks(t, s, "ro-old")); n != 3 {
		t.Fatalf("%d chunks after the save, want 3", n)
	}
}
