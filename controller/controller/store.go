package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/internal/etcdclient"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/daemonconfig"
	"github.com/ferrydeploy/ferry/shared/dirlock"
)

// The store's backends: a bbolt file in the data dir (the default, one
// controller) or etcd, which several controllers share.
const (
	StoreBbolt = "bbolt"
	StoreEtcd  = "etcd"
)

// StoreConfig says where the controller keeps its store.
type StoreConfig struct {
	Backend string            // StoreBbolt (default) or StoreEtcd
	Etcd    etcdclient.Config // for StoreEtcd
}

// DefaultEtcdLogMaxTotalBytes is --log-max-total's default on etcd: etcd
// keeps its whole data set in memory-mapped pages under a 2 GiB quota by
// default, and old revisions until it compacts them.
const DefaultEtcdLogMaxTotalBytes = 128 << 20

// storeFlags defines the flags (and so the config keys) naming the store.
func storeFlags(fs *pflag.FlagSet, sc *StoreConfig) {
	sc.Backend = StoreBbolt
	fs.Var(daemonconfig.ChoiceValue{S: &sc.Backend, Choices: []string{StoreBbolt, StoreEtcd}}, "store", "where the store is: bbolt (ferry.db in the data dir, one controller) or etcd (shared by several controllers; --etcd-endpoints)")
	fs.StringSliceVar(&sc.Etcd.Endpoints, "etcd-endpoints", nil, "comma-separated etcd client URLs, e.g. https://10.0.0.1:2379,https://10.0.0.2:2379 (with --store etcd)")
	fs.StringVar(&sc.Etcd.CA, "etcd-ca", "", "PEM file of the CA that signed etcd's serving certificates")
	fs.StringVar(&sc.Etcd.Cert, "etcd-cert", "", "PEM client certificate the controller presents to etcd (with --etcd-key)")
	fs.StringVar(&sc.Etcd.Key, "etcd-key", "", "PEM key of --etcd-cert")
	fs.StringVar(&sc.Etcd.Prefix, "etcd-prefix", etcdclient.DefaultPrefix, "key prefix of this installation's store in etcd; controllers sharing a store use the same one")
}

func (sc *StoreConfig) setDefaults() error {
	switch sc.Backend {
	case "", StoreBbolt:
		sc.Backend = StoreBbolt
	case StoreEtcd:
		if err := sc.Etcd.Validate(); err != nil {
			return fmt.Errorf("--store etcd: %w", err)
		}
	default:
		return fmt.Errorf("--store %q: use bbolt or etcd", sc.Backend)
	}
	return nil
}

// storeFile is the store's name in the data dir.
const storeFile = "ferry.db"

// openStore opens the data dir's store. A new one is created only on a
// first start (nothing else in the data dir yet) or with AllowNewStore:
// a store that went missing or was emptied beside a CA, the admin
// credential or artifact blobs would otherwise come back empty, and every
// node would be refused as not enrolled.
func openStore(cfg Config) (*store.Store, error) {
	path := filepath.Join(cfg.DataDir, storeFile)
	if cfg.Store.Backend == StoreEtcd {
		return nil, errors.New("openStore: the etcd store is opened by openEtcdStore")
	}
	held, err := earlierState(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s, err := store.Open(path, store.Options{Create: len(held) == 0 || cfg.AllowNewStore})
	switch {
	case errors.Is(err, store.ErrNoStore):
		return nil, fmt.Errorf("%w, but %s holds %s from earlier runs: the nodes, tokens, packages and rollouts it recorded are not there. Restore it from a backup: %s. To start over with an empty store instead (every node must enroll again, every package be applied again), start once with --new-store",
			err, cfg.DataDir, strings.Join(held, ", "), restoreSteps(cfg.DataDir))
	case errors.Is(err, store.ErrDamaged):
		return nil, fmt.Errorf("%w: %s. --new-store does not replace a damaged store: move %s away first to start over with an empty one", err, restoreSteps(cfg.DataDir), path)
	case err != nil:
		return nil, err
	}
	return s, nil
}

// openEtcdStore connects to etcd and opens the store under the prefix. A
// prefix without records beside a data dir that holds earlier state is
// refused like a lost ferry.db: the records are in the data dir's
// ferry.db until `ferry-controller migrate` copies them, or the prefix is
// not this installation's. A controller joins others only when told
// (Config.Join): its data dir then holds the installation's CA and
// nothing else of its own, and the prefix must already hold the store
// the others created. Refusals on an empty prefix are made before the
// store is opened, so a refused start leaves nothing in etcd that a
// later start could take for a store.
func openEtcdStore(ctx context.Context, cfg Config) (*store.Store, *clientv3.Client, error) {
	cli, err := etcdclient.New(ctx, cfg.Store.Etcd)
	if err != nil {
		return nil, nil, err
	}
	prefix, endpoints := cfg.Store.Etcd.KeyPrefix(), strings.Join(cfg.Store.Etcd.Endpoints, ",")
	closeFail := func(err error) (*store.Store, *clientv3.Client, error) {
		_ = cli.Close()
		return nil, nil, err
	}
	held, err := earlierState(cfg.DataDir)
	if err != nil {
		return closeFail(err)
	}
	hasCA := slices.Contains(held, heldCACert) && slices.Contains(held, heldCAKey)
	if _, err := os.Stat(filepath.Join(cfg.DataDir, storeFile)); err == nil {
		held = append(held, "a bbolt store ("+storeFile+")")
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := cli.Get(gctx, prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return closeFail(fmt.Errorf("etcd at %s: read prefix %s: %w", endpoints, prefix, err))
	}
	existed := resp.Count > 0
	switch {
	case cfg.Join && !existed:
		return closeFail(fmt.Errorf("--join: etcd prefix %s at %s holds no store, so there are no controllers to join there: give this controller the --etcd-endpoints and --etcd-prefix the others use, or start the installation's first controller without --join", prefix, endpoints))
	case cfg.Join && !hasCA:
		return closeFail(fmt.Errorf("--join: %s does not hold the installation's CA: copy ca.crt, ca.key and gossip.key from another controller's data dir into it first (README, \"Running several controllers\")", cfg.DataDir))
	case !existed && len(held) > 0 && !cfg.AllowNewStore:
		return closeFail(noStoreError(cfg, held))
	}
	s, err := store.OpenEtcd(cli, prefix) //nolint:contextcheck // the store bounds each etcd request itself (etcdOpTimeout)
	if err != nil {
		_ = cli.Close() // the store's error is the one to report
		return nil, nil, err
	}
	fail := func(err error) (*store.Store, *clientv3.Client, error) {
		_ = s.Close()
		_ = cli.Close()
		return nil, nil, err
	}
	if cfg.Join || cfg.AllowNewStore {
		return s, cli, nil
	}
	empty, err := s.Empty()
	if err != nil {
		return fail(err)
	}
	if !empty && !hasCA {
		return fail(fmt.Errorf("etcd prefix %s at %s holds an installation's store, but %s holds no CA: this controller would make a CA of its own that none of the installation's agents and admins trust. To join the controllers on this store, copy ca.crt, ca.key and gossip.key from another controller's data dir into it and start with --join", prefix, endpoints, cfg.DataDir))
	}
	if empty && len(held) > 0 {
		return fail(noStoreError(cfg, held))
	}
	return s, cli, nil
}

// noStoreError refuses an etcd prefix without records beside a data dir
// that holds earlier state.
func noStoreError(cfg Config, held []string) error {
	endpoints := strings.Join(cfg.Store.Etcd.Endpoints, ",")
	return fmt.Errorf("etcd prefix %s at %s holds no store, but %s holds %s from earlier runs: copy the bbolt store into etcd first with `ferry-controller migrate --from bbolt:%s --to etcd:%s` (docs/operations.md, \"The store\"); a controller joining others must use their --etcd-endpoints and --etcd-prefix, and --join; to start over with an empty store instead, start once with --new-store",
		cfg.Store.Etcd.KeyPrefix(), endpoints, cfg.DataDir, strings.Join(held, ", "), cfg.DataDir, endpoints)
}

// What earlierState names the CA's files.
const (
	heldCACert = "the CA certificate (ca.crt)"
	heldCAKey  = "the CA key (ca.key)"
)

func restoreSteps(dataDir string) string {
	return fmt.Sprintf("stop the controller, run `ferry-controller restore --data-dir %s --from BACKUP` and start it again (docs/operations.md)", dataDir)
}

// earlierState lists what a previous start left in dataDir besides the
// store: the CA, the bootstrap admin credential, artifact blobs.
func earlierState(dataDir string) ([]string, error) {
	var held []string
	for _, f := range []struct{ name, what string }{
		{"ca.crt", heldCACert},
		{"ca.key", heldCAKey},
		{"admin.yaml", "the admin credential (admin.yaml)"},
	} {
		if _, err := os.Stat(filepath.Join(dataDir, f.name)); err == nil {
			held = append(held, f.what)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("inspect data dir: %w", err)
		}
	}
	// artifact.Store keeps its blobs in <Dir>/sha256.
	blobs, err := os.ReadDir(filepath.Join(dataDir, "artifacts", "sha256"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("inspect data dir: %w", err)
	}
	switch n := len(blobs); {
	case n == 1:
		held = append(held, "1 artifact blob")
	case n > 1:
		held = append(held, fmt.Sprintf("%d artifact blobs", n))
	}
	return held, nil
}

// lockFile in the data dir is held by the running controller and by
// restore (package dirlock); bbolt's own lock on ferry.db cannot say who
// holds it.
const lockFile = "controller.lock"

func lockDataDir(dir string) (*dirlock.Lock, error) {
	l, err := dirlock.Acquire(dir, lockFile)
	var held *dirlock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("data dir %w; another ferry-controller (or a restore) uses it: stop that one, or give this one its own --data-dir", held)
	}
	if err != nil {
		return nil, fmt.Errorf("lock the data dir: %w", err)
	}
	return l, nil
}
