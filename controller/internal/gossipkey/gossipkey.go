// Package gossipkey keeps the controller's gossip key and its generation in
// the data dir, and replaces the key when it is rotated. A rotation is on
// disk, written atomically, and recorded (the audit entry) before anyone is
// told the new key: a controller that crashes mid-rotation starts with the
// old key or the new one, never a mix, and a rotation that cannot be
// recorded puts the old key back.
package gossipkey

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// Key is one generation of the gossip key.
type Key struct {
	// Generation is 1 for the key made on the controller's first start and
	// one more for each rotation.
	Generation uint64 `json:"generation"`
	Key        []byte `json:"key"`
	// RotatedAt is when this key replaced the one before; zero for the
	// first key.
	RotatedAt time.Time `json:"rotated_at,omitzero"`
}

// Ring is the controller's current gossip key, backed by its file.
type Ring struct {
	path string

	mu  sync.Mutex
	cur Key
}

// Open loads the key file at path, creating generation 1 when there is
// none. A file of 32 bytes is the format of controllers from before
// rotation (the bare key): it is read as generation 1 and rewritten in the
// current format at the first rotation.
func Open(path string) (*Ring, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := gossip.NewKey()
		if err != nil {
			return nil, err
		}
		r := &Ring{path: path, cur: Key{Generation: 1, Key: key}}
		return r, r.write(r.cur)
	}
	if err != nil {
		return nil, fmt.Errorf("read gossip key: %w", err)
	}
	k, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("gossip key %s: %w; restore it from a backup of the data dir, or move it away and re-enroll every agent", path, err)
	}
	return &Ring{path: path, cur: k}, nil
}

func decode(data []byte) (Key, error) {
	var k Key
	if err := json.Unmarshal(data, &k); err != nil {
		if len(data) == gossip.KeySize {
			return Key{Generation: 1, Key: data}, nil
		}
		return Key{}, fmt.Errorf("neither a key file nor a %d-byte key (%d bytes)", gossip.KeySize, len(data))
	}
	if len(k.Key) != gossip.KeySize || k.Generation == 0 {
		return Key{}, fmt.Errorf("holds a %d-byte key of generation %d, want a %d-byte key of generation 1 or more", len(k.Key), k.Generation, gossip.KeySize)
	}
	return k, nil
}

func (r *Ring) write(k Key) error {
	data, err := json.Marshal(k)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(r.path, append(data, '\n'), 0o600)
}

// Current is the key members use now.
func (r *Ring) Current() Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Rotate makes a new key of the next generation, stores it and calls
// record with it (to write the audit entry); when record fails, the
// previous key is stored back and record's error returned. On any error the
// current key stays.
func (r *Ring) Rotate(now time.Time, record func(Key) error) (Key, error) {
	key, err := gossip.NewKey()
	if err != nil {
		return Key{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := Key{Generation: r.cur.Generation + 1, Key: key, RotatedAt: now}
	if err := r.write(next); err != nil {
		return Key{}, fmt.Errorf("store the new gossip key: %w", err)
	}
	if err := record(next); err != nil {
		if werr := r.write(r.cur); werr != nil {
			// The new key stays on disk unannounced: a restart would hand
			// it out, which is a rotation nobody recorded.
			return Key{}, fmt.Errorf("%w; and putting the previous gossip key back failed: %w", err, werr)
		}
		return Key{}, err
	}
	r.cur = next
	return next, nil
}
