package identity

import (
	"bytes"
	"encoding/json"
	"path/filepath"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// GossipKey is the gossip key the node uses now and its generation.
func (id *Identity) GossipKey() ([]byte, uint64) {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.Info.GossipKey, id.Info.GossipKeyGeneration
}

// SetGossipKey stores a gossip key the controller sent, so a restarted
// agent starts gossip with it. It reports whether the key changed; the
// same key under a new generation only records the generation.
func (id *Identity) SetGossipKey(key []byte, generation uint64) (changed bool, err error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	changed = !bytes.Equal(key, id.Info.GossipKey)
	if !changed && generation == id.Info.GossipKeyGeneration {
		return false, nil
	}
	info := id.Info
	info.GossipKey, info.GossipKeyGeneration = bytes.Clone(key), generation
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return false, err
	}
	if err := atomicfile.WriteFile(filepath.Join(id.Dir, stateFile), data, 0o600); err != nil {
		return false, err
	}
	id.Info.GossipKey, id.Info.GossipKeyGeneration = info.GossipKey, info.GossipKeyGeneration
	return changed, nil
}
