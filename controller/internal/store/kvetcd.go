package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/internal/etcdclient"
)

// etcdKV is the etcd v3 backend. Its transactions are optimistic: every
// read is at one revision (the first read's), writes are buffered, and the
// commit is one etcd Txn whose compares check that every key read is
// unchanged since then; if another controller changed one, the whole
// transaction runs again (a bounded number of times). Ranges are covered by
// a per-bucket version key that every write to the bucket (or below it)
// bumps, since etcd compares cannot see a key deleted from a range.
//
// Layout under the prefix P, for a bucket path b1/b2 with each name escaped
// (escName) so that it never holds '/' and never starts with '!':
//
//	P/b1/b2/!k/KEY   a record (KEY raw bytes, so etcd's order is bbolt's)
//	P/b1/b2/!v       the bucket's version key
//	P/b1/b2/!s       the bucket's sequence (NextSequence)
//	P/b1/!b/NAME     marks that nested bucket NAME exists in b1
//
// etcd's limits apply per transaction: the request size (1.5 MiB by
// default), the number of compares and of operations (128 by default) and
// so the size of one record. A transaction that read more keys than
// maxCompares compares only the version keys of the top-level buckets it
// read, which is stricter (more retries) and always fits.
type etcdKV struct {
	cli       *clientv3.Client
	prefix    string
	endpoints []string
	timeout   time.Duration
	// wmu queues this process's raced write transactions: a transaction
	// runs first without it, and after a conflict it runs again only in
	// turn with this process's other raced ones. Transactions of one
	// controller that write the same keys (every enrollment bumps its
	// token's uses and the audit sequence) would otherwise race each
	// other until they give up (64 enrollments at once exhausted
	// etcdAttempts), while those that touch different keys (a node's
	// connection) still run side by side. Races with other controllers
	// stay optimistic.
	wmu sync.Mutex

	// Batch gathers calls for up to batchDelay or batchMax calls and runs
	// them as one transaction (batch.go's rules are bbolt's).
	bmu     sync.Mutex
	pending []batchCall
	btimer  *time.Timer

	// fence, when set, gives compares every write transaction must also
	// pass (the leader key's revision, so a deposed leader's writes fail);
	// its error, or ErrFenced when they fail, is the transaction's.
	fence func() ([]clientv3.Cmp, error)
}

// batchCall is one Batch call waiting for its batch.
type batchCall struct {
	fn  func(kvTx) error
	err chan error
}

const (
	// batchDelay and batchMax bound a batch: bbolt's delay; few enough
	// calls that their reads and writes stay within one transaction's
	// compares and operations.
	batchDelay = 10 * time.Millisecond
	batchMax   = 32
)

const (
	// etcdAttempts bounds how often a raced transaction is run again.
	etcdAttempts = 16
	// maxCompares: above it a transaction compares top-level versions only.
	maxCompares = 96
	// etcdPage is how many keys one range read returns.
	etcdPage = 512
	// etcdOpTimeout bounds each request to etcd.
	etcdOpTimeout = 5 * time.Second
)

// errEtcdConflict says another writer changed what a transaction read.
var errEtcdConflict = errors.New("etcd transaction conflict")

func newEtcdKV(cli *clientv3.Client, prefix string) *etcdKV {
	return &etcdKV{cli: cli, prefix: prefix, endpoints: cli.Endpoints(), timeout: etcdOpTimeout}
}

func (e *etcdKV) Close() error { return nil } // the client is its opener's

func (e *etcdKV) View(fn func(kvTx) error) error {
	for range etcdAttempts {
		t := e.begin(false)
		err := fn(t)
		if t.err != nil {
			err = t.err
		}
		if !errors.Is(err, errEtcdConflict) {
			return err
		}
	}
	return e.exhausted()
}

// Batch runs fn in a transaction shared with other Batch calls made at
// about the same time (a reconnect storm's thousands of connection
// records become a few hundred transactions). As with bbolt's Batch, if
// one call's fn fails the batch is discarded and each call runs on its
// own, so fn may run more than once and one call's error is its own.
func (e *etcdKV) Batch(fn func(kvTx) error) error {
	errc := make(chan error, 1)
	e.bmu.Lock()
	e.pending = append(e.pending, batchCall{fn, errc})
	switch {
	case len(e.pending) >= batchMax:
		calls := e.pending
		e.pending = nil
		if e.btimer != nil {
			e.btimer.Stop()
			e.btimer = nil
		}
		go e.runBatch(calls)
	case e.btimer == nil:
		e.btimer = time.AfterFunc(batchDelay, e.flushBatch)
	}
	e.bmu.Unlock()
	return <-errc
}

func (e *etcdKV) flushBatch() {
	e.bmu.Lock()
	calls := e.pending
	e.pending, e.btimer = nil, nil
	e.bmu.Unlock()
	if len(calls) > 0 {
		e.runBatch(calls)
	}
}

// errBatchCall says one call of a batch failed: the calls run alone.
var errBatchCall = errors.New("a call of the batch failed")

func (e *etcdKV) runBatch(calls []batchCall) {
	err := e.Update(func(tx kvTx) error {
		for _, c := range calls {
			if err := c.fn(tx); err != nil {
				return errBatchCall
			}
		}
		return nil
	})
	if err == nil || len(calls) == 1 && !errors.Is(err, errBatchCall) {
		for _, c := range calls {
			c.err <- err
		}
		return
	}
	for _, c := range calls {
		c.err <- e.Update(c.fn)
	}
}

func (e *etcdKV) Update(fn func(kvTx) error) error {
	locked := false
	defer func() {
		if locked {
			e.wmu.Unlock()
		}
	}()
	for attempt := range etcdAttempts {
		if e.fence != nil {
			// Refused before the transaction's reads, which would wait
			// for etcd's timeouts when this controller is cut off.
			if _, err := e.fence(); err != nil {
				return err
			}
		}
		t := e.begin(true)
		err := fn(t)
		if t.err != nil {
			err = t.err
		}
		if err == nil {
			err = t.commit()
		}
		if !errors.Is(err, errEtcdConflict) {
			return err
		}
		if !locked {
			// Raced: again at once, in turn with this process's other
			// raced transactions.
			e.wmu.Lock()
			locked = true
			continue
		}
		// Another controller won the race; back off a little, with jitter,
		// so two that keep racing part.
		time.Sleep(time.Duration(1+rand.IntN(4<<min(attempt, 6))) * time.Millisecond) //nolint:gosec // jitter, not a secret
	}
	return e.exhausted()
}

func (e *etcdKV) exhausted() error {
	return fmt.Errorf("etcd at %s: the transaction was raced by other controllers' writes %d times in a row; nothing was changed, try again", strings.Join(e.endpoints, ","), etcdAttempts)
}

// fail turns an etcd client error into one an operator can act on.
func (e *etcdKV) fail(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrCompacted), errors.Is(err, rpctypes.ErrFutureRev):
		return errEtcdConflict // the snapshot is gone: run again on a new one
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("etcd at %s refused a transaction with too many operations (its --max-txn-ops; 128 by default): %w", strings.Join(e.endpoints, ","), err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("etcd at %s refused a request as too large (its --max-request-bytes; 1.5 MiB by default): %w", strings.Join(e.endpoints, ","), err)
	case etcdclient.IsUnreachable(err):
		return etcdclient.Unreachable(e.endpoints, err)
	}
	return fmt.Errorf("etcd at %s: %w", strings.Join(e.endpoints, ","), err)
}

type etcdWrite struct {
	val []byte
	del bool
}

type keyRange struct{ from, to string }

func (r keyRange) has(k string) bool { return k >= r.from && k < r.to }

type etcdTx struct {
	kv       *etcdKV
	writable bool
	err      error // the first failed read; the transaction's result
	rev      int64 // 0 until the first read
	reads    map[string]int64
	cache    map[string][]byte
	writes   map[string]etcdWrite
	deleted  []keyRange
	bump     map[string]bool // bucket paths written
}

func (e *etcdKV) begin(writable bool) *etcdTx {
	return &etcdTx{kv: e, writable: writable, reads: map[string]int64{}, cache: map[string][]byte{}, writes: map[string]etcdWrite{}, bump: map[string]bool{}}
}

func (t *etcdTx) Bucket(name []byte) kvBucket {
	return &etcdBucket{t: t, paths: []string{t.kv.prefix + "/" + escName(name)}}
}

func (t *etcdTx) fail(err error) {
	if t.err == nil {
		t.err = t.kv.fail(err)
	}
}

func (t *etcdTx) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), t.kv.timeout)
}

func (t *etcdTx) atRev() []clientv3.OpOption {
	if t.rev == 0 {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithRev(t.rev)}
}

func (t *etcdTx) pinRev(rev int64) {
	if t.rev == 0 {
		t.rev = rev
	}
}

func (t *etcdTx) deletedKey(k string) bool {
	for _, r := range t.deleted {
		if r.has(k) {
			return true
		}
	}
	return false
}

// get reads k as this transaction sees it: its own writes first, then
// etcd at the transaction's revision; the read is checked at commit.
func (t *etcdTx) get(k string) []byte {
	if w, ok := t.writes[k]; ok {
		if w.del {
			return nil
		}
		return w.val
	}
	if t.deletedKey(k) {
		return nil
	}
	if v, ok := t.cache[k]; ok {
		return v
	}
	if t.err != nil {
		return nil
	}
	ctx, cancel := t.ctx()
	defer cancel()
	resp, err := t.kv.cli.Get(ctx, k, t.atRev()...)
	if err != nil {
		t.fail(err)
		return nil
	}
	t.pinRev(resp.Header.Revision)
	var v []byte
	var mod int64
	if len(resp.Kvs) == 1 {
		v, mod = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
	}
	t.reads[k], t.cache[k] = mod, v
	return v
}

func (t *etcdTx) put(k string, v []byte) error {
	if !t.writable {
		return errors.New("store: write in a read-only transaction")
	}
	// A put inside a range deleted earlier in this transaction splits the
	// range: etcd refuses a Txn whose put overlaps its delete.
	for i, r := range t.deleted {
		if r.has(k) {
			t.deleted[i] = keyRange{r.from, k}
			t.deleted = append(t.deleted, keyRange{k + "\x00", r.to})
		}
	}
	t.writes[k] = etcdWrite{val: slices.Clone(v)}
	return nil
}

func (t *etcdTx) del(k string) error {
	if !t.writable {
		return errors.New("store: write in a read-only transaction")
	}
	t.writes[k] = etcdWrite{del: true}
	return nil
}

func (t *etcdTx) deleteRange(from, to string) error {
	if !t.writable {
		return errors.New("store: write in a read-only transaction")
	}
	for k := range t.writes {
		if k >= from && k < to {
			delete(t.writes, k)
		}
	}
	t.deleted = append(t.deleted, keyRange{from, to})
	return nil
}

// scan reads [start, end) at the transaction's revision merged with its
// own writes, in key order (or reversed), until fn returns false.
func (t *etcdTx) scan(start, end string, reverse bool, fn func(k string, v []byte) (bool, error)) error {
	var overlay []string
	for k := range t.writes {
		if k >= start && k < end {
			overlay = append(overlay, k)
		}
	}
	slices.Sort(overlay)
	if reverse {
		slices.Reverse(overlay)
	}
	before := func(a, b string) bool { return (a < b) != reverse } // a comes first
	emitOverlay := func(upTo string, all bool) (bool, error) {
		for len(overlay) > 0 && (all || before(overlay[0], upTo)) {
			k := overlay[0]
			overlay = overlay[1:]
			if w := t.writes[k]; !w.del {
				if more, err := fn(k, w.val); err != nil || !more {
					return false, err
				}
			}
		}
		return true, nil
	}
	lo, hi := start, end
	for t.err == nil {
		opts := append([]clientv3.OpOption{clientv3.WithRange(hi), clientv3.WithLimit(etcdPage)}, t.atRev()...)
		if reverse {
			opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		}
		ctx, cancel := t.ctx()
		resp, err := t.kv.cli.Get(ctx, lo, opts...)
		cancel()
		if err != nil {
			t.fail(err)
			break
		}
		t.pinRev(resp.Header.Revision)
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			if more, err := emitOverlay(k, false); err != nil || !more {
				return err
			}
			if len(overlay) > 0 && overlay[0] == k {
				continue // this transaction's write stands for it
			}
			if t.deletedKey(k) {
				continue
			}
			if more, err := fn(k, kv.Value); err != nil || !more {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		last := string(resp.Kvs[len(resp.Kvs)-1].Key)
		if reverse {
			hi = last
		} else {
			lo = last + "\x00"
		}
	}
	if t.err != nil {
		return t.err
	}
	_, err := emitOverlay("", true)
	return err
}

func (t *etcdTx) commit() error {
	if len(t.writes) == 0 && len(t.deleted) == 0 {
		return nil
	}
	var ops []clientv3.Op
	for p := range t.bump {
		vk := p + "/!v"
		if !t.deletedKey(vk) {
			t.writes[vk] = etcdWrite{val: nil}
		}
	}
	if len(t.reads) > maxCompares {
		// Compare the top-level buckets' versions instead: every write
		// below a bucket bumps its version, so this sees every change.
		tops := map[string]bool{}
		for k := range t.reads {
			rest := strings.TrimPrefix(k, t.kv.prefix+"/")
			top, _, _ := strings.Cut(rest, "/")
			tops[t.kv.prefix+"/"+top+"/!v"] = true
		}
		reads := t.reads
		t.reads = map[string]int64{}
		for vk := range tops {
			if mod, ok := reads[vk]; ok {
				t.reads[vk] = mod
				continue
			}
			delete(t.cache, vk)
			saved := t.writes[vk]
			_, written := t.writes[vk]
			delete(t.writes, vk)
			t.get(vk)
			if written {
				t.writes[vk] = saved
			}
		}
		if t.err != nil {
			return t.err
		}
	}
	cmps := make([]clientv3.Cmp, 0, len(t.reads))
	for k, mod := range t.reads {
		if mod == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
		}
	}
	for k, w := range t.writes {
		if w.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.val)))
		}
	}
	for _, r := range t.deleted {
		if r.from < r.to {
			ops = append(ops, clientv3.OpDelete(r.from, clientv3.WithRange(r.to)))
		}
	}
	ctx, cancel := t.ctx()
	defer cancel()
	if t.kv.fence != nil {
		return t.commitFenced(ctx, cmps, ops)
	}
	resp, err := t.kv.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return t.kv.fail(err)
	}
	if !resp.Succeeded {
		return errEtcdConflict
	}
	return nil
}

// commitFenced commits the transaction nested in one whose compares are
// the fence's: the outer result says whether the fence held, the inner
// one whether what the transaction read is unchanged.
func (t *etcdTx) commitFenced(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) error {
	fence, err := t.kv.fence()
	if err != nil {
		return err
	}
	resp, err := t.kv.cli.Txn(ctx).If(fence...).Then(clientv3.OpTxn(cmps, ops, nil)).Commit()
	if err != nil {
		return t.kv.fail(err)
	}
	if !resp.Succeeded {
		return ErrFenced
	}
	if len(resp.Responses) != 1 || resp.Responses[0].GetResponseTxn() == nil || !resp.Responses[0].GetResponseTxn().GetSucceeded() {
		return errEtcdConflict
	}
	return nil
}

// etcdBucket is a bucket of an etcdTx; paths are its own path and its
// ancestors', the bucket's own last.
type etcdBucket struct {
	t     *etcdTx
	paths []string
}

func (b *etcdBucket) path() string       { return b.paths[len(b.paths)-1] }
func (b *etcdBucket) dataPrefix() string { return b.path() + "/!k/" }

func (b *etcdBucket) written() {
	for _, p := range b.paths {
		b.t.bump[p] = true
	}
}

func (b *etcdBucket) Get(key []byte) []byte { return b.t.get(b.dataPrefix() + string(key)) }

func (b *etcdBucket) Put(key, value []byte) error {
	b.written()
	return b.t.put(b.dataPrefix()+string(key), value)
}

func (b *etcdBucket) Delete(key []byte) error {
	b.written()
	return b.t.del(b.dataPrefix() + string(key))
}

func (b *etcdBucket) DeleteRange(from, to []byte) error {
	b.written()
	return b.t.deleteRange(b.dataPrefix()+string(from), b.dataPrefix()+string(to))
}

// readVersion makes the bucket's version part of what the commit checks,
// so a range read sees keys others added or deleted.
func (b *etcdBucket) readVersion() { b.t.get(b.path() + "/!v") }

func (b *etcdBucket) Scan(from []byte, fn func(k, v []byte) (bool, error)) error {
	b.readVersion()
	p := b.dataPrefix()
	return b.t.scan(p+string(from), prefixEnd(p), false, func(k string, v []byte) (bool, error) {
		return fn([]byte(k[len(p):]), v)
	})
}

func (b *etcdBucket) ScanReverse(fn func(k, v []byte) (bool, error)) error {
	b.readVersion()
	p := b.dataPrefix()
	return b.t.scan(p, prefixEnd(p), true, func(k string, v []byte) (bool, error) {
		return fn([]byte(k[len(p):]), v)
	})
}

func (b *etcdBucket) NextSequence() (uint64, error) {
	seq := b.Sequence()
	if b.t.err != nil {
		return 0, b.t.err
	}
	seq++
	return seq, b.SetSequence(seq)
}

func (b *etcdBucket) Sequence() uint64 {
	if v := b.t.get(b.path() + "/!s"); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (b *etcdBucket) SetSequence(v uint64) error {
	return b.t.put(b.path()+"/!s", binary.BigEndian.AppendUint64(nil, v))
}

func (b *etcdBucket) marker(name []byte) string { return b.path() + "/!b/" + string(name) }

func (b *etcdBucket) child(name []byte) *etcdBucket {
	return &etcdBucket{t: b.t, paths: append(slices.Clone(b.paths), b.path()+"/"+escName(name))}
}

func (b *etcdBucket) Bucket(name []byte) kvBucket {
	if b.t.get(b.marker(name)) == nil {
		return nil
	}
	return b.child(name)
}

func (b *etcdBucket) CreateBucketIfNotExists(name []byte) (kvBucket, error) {
	if b.t.get(b.marker(name)) == nil {
		if b.t.err != nil {
			return nil, b.t.err
		}
		b.written()
		if err := b.t.put(b.marker(name), []byte{1}); err != nil {
			return nil, err
		}
	}
	return b.child(name), nil
}

func (b *etcdBucket) DeleteBucket(name []byte) error {
	if b.t.get(b.marker(name)) == nil {
		if b.t.err != nil {
			return b.t.err
		}
		return fmt.Errorf("delete bucket %q: no such bucket", name)
	}
	b.written()
	if err := b.t.del(b.marker(name)); err != nil {
		return err
	}
	p := b.child(name).path() + "/"
	return b.t.deleteRange(p, prefixEnd(p))
}

func (b *etcdBucket) Buckets(prefix []byte, fn func(name []byte) error) error {
	b.readVersion()
	p := b.path() + "/!b/"
	return b.t.scan(p+string(prefix), prefixEnd(p+string(prefix)), false, func(k string, _ []byte) (bool, error) {
		return true, fn([]byte(k[len(p):]))
	})
}

// escName escapes a bucket name for a key path: letters, digits and
// "._-@" as they are, every other byte as %XX, so a name never holds '/'
// nor starts with '!' (the layout's markers).
func escName(name []byte) string {
	var sb strings.Builder
	for _, c := range name {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || bytes.IndexByte([]byte("._-@"), c) >= 0 {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, "%%%02X", c)
		}
	}
	return sb.String()
}

// prefixEnd is the first key after every key starting with p.
func prefixEnd(p string) string { return clientv3.GetPrefixRangeEnd(p) }
