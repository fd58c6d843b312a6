// Package agentstatus is the running agent's view of itself, written to
// its state directory (status.json) so `ferry-agent doctor`, run beside
// it, can report what only the daemon knows: whether its stream to the
// controller is up, the clock skew measured at the last welcome, the
// gossip peers it sees, and its last drift check.
package agentstatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// FileName is the file under the state directory.
const FileName = "status.json"

// Status is what the daemon writes.
type Status struct {
	// WrittenAt is when the daemon wrote it (node clock); a stale file
	// means the daemon is not running or is stuck.
	WrittenAt time.Time `json:"written_at"`
	// Controller is the controller the agent dials now (connected to it
	// when Connected): the configured address, and the address it
	// resolved to when that differs.
	Controller string `json:"controller"`
	// Controllers are every configured controller address.
	Controllers []string `json:"controllers,omitempty"`
	// Connected is whether its stream was up when written.
	Connected bool `json:"connected"`
	// LastWelcome is when the controller last accepted its stream.
	LastWelcome time.Time `json:"last_welcome,omitzero"`
	// ClockSkew is the controller's clock minus this node's, measured at
	// the last welcome.
	ClockSkew time.Duration `json:"clock_skew"`
	// Gossip is false when the agent runs without gossip.
	Gossip bool `json:"gossip"`
	// GossipAlive counts the members this node sees alive, itself
	// included; GossipMembers all it knows of.
	GossipAlive   int `json:"gossip_alive"`
	GossipMembers int `json:"gossip_members"`
	// Drift is the last drift check, protojson.
	Drift json.RawMessage `json:"drift,omitempty"`
}

// DriftReport decodes Drift; nil when there is none.
func (s *Status) DriftReport() (*ferryv1.DriftReport, error) {
	if len(s.Drift) == 0 {
		return nil, nil
	}
	r := &ferryv1.DriftReport{}
	if err := protojson.Unmarshal(s.Drift, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Write stores s in dir, atomically.
func Write(dir string, s Status, drift *ferryv1.DriftReport) error {
	if drift != nil {
		b, err := protojson.Marshal(drift)
		if err != nil {
			return err
		}
		s.Drift = b
	}
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, FileName), b, 0o600)
}

// ErrNone is Read's error when the daemon has not written a status.
var ErrNone = errors.New("no status file: the agent has not run with this state dir")

// Read loads the status from dir.
func Read(dir string) (*Status, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FileName), err)
	}
	return &s, nil
}
