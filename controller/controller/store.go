package controller

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/dirlock"
)

// storeFile is the store's name in the data dir.
const storeFile = "ferry.db"

// openStore opens the data dir's store. A new one is created only on a
// first start (nothing else in the data dir yet) or with AllowNewStore:
// a store that went missing or was emptied beside a CA, the admin
// credential or artifact blobs would otherwise come back empty, and every
// node would be refused as not enrolled.
func openStore(cfg Config) (*store.Store, error) {
	path := filepath.Join(cfg.DataDir, storeFile)
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

func restoreSteps(dataDir string) string {
	return fmt.Sprintf("stop the controller, run `ferry-controller restore --data-dir %s --from BACKUP` and start it again (docs/operations.md)", dataDir)
}

// earlierState lists what a previous start left in dataDir besides the
// store: the CA, the bootstrap admin credential, artifact blobs.
func earlierState(dataDir string) ([]string, error) {
	var held []string
	for _, f := range []struct{ name, what string }{
		{"ca.crt", "the CA certificate (ca.crt)"},
		{"ca.key", "the CA key (ca.key)"},
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
