package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MetaMaxSize is memberlist's limit on a node's metadata; Start refuses a
// Meta whose encoding is larger.
const MetaMaxSize = 512

// metaVersion is the first byte of an encoded Meta. A decoder reads the
// fields it knows and ignores trailing ones, so a newer agent can add a field
// without breaking an older controller.
const metaVersion = 1

// Meta is what a member tells the cluster about itself. It stays small:
// gossip carries identity, never application data.
type Meta struct {
	NodeID       string
	Role         string // RoleAgent or RoleController
	Group        string
	AgentVersion string
}

// Roles a member announces in its Meta.
const (
	RoleAgent      = "agent"
	RoleController = "controller"
)

// Encode packs m as a version byte followed by length-prefixed strings.
func (m Meta) Encode() ([]byte, error) {
	fields := []string{m.NodeID, m.Role, m.Group, m.AgentVersion}
	buf := []byte{metaVersion}
	for _, f := range fields {
		buf = binary.AppendUvarint(buf, uint64(len(f)))
		buf = append(buf, f...)
	}
	if len(buf) > MetaMaxSize {
		return nil, fmt.Errorf("gossip meta is %d bytes, over memberlist's %d byte limit; shorten the node ID, group or version", len(buf), MetaMaxSize)
	}
	return buf, nil
}

var errMetaTruncated = errors.New("gossip meta truncated")

// DecodeMeta reverses Encode. Empty input decodes to the zero Meta (a member
// that announced nothing).
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, nil
	}
	if b[0] != metaVersion {
		return Meta{}, fmt.Errorf("gossip meta version %d not understood (want %d); upgrade this binary", b[0], metaVersion)
	}
	b = b[1:]
	var fields [4]string
	for i := range fields {
		if len(b) == 0 {
			// Fields missing at the end stay empty: an older encoder.
			break
		}
		n, w := binary.Uvarint(b)
		if w <= 0 {
			return Meta{}, errMetaTruncated
		}
		b = b[w:]
		if n > uint64(len(b)) {
			return Meta{}, errMetaTruncated
		}
		fields[i], b = string(b[:n]), b[n:]
	}
	return Meta{NodeID: fields[0], Role: fields[1], Group: fields[2], AgentVersion: fields[3]}, nil
}
