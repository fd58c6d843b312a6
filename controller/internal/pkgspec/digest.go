package pkgspec

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// contentVersion starts every canonical encoding; change it (and accept
// that every stored digest changes) only when the encoding must change.
const contentVersion = "ferry.package.content.v1"

// ContentDigest returns "sha256:<hex>" of the package's canonical content:
// name, version, the artifact (its digest once resolved, else the reference
// as written) and every step's kind and fields (written by the kind's
// Digest), in step order. It does not depend on
// YAML formatting, comments, field order within a mapping, or the Source,
// ContentDigest, CreatedAt and CreatedBy fields; unset defaults count as
// their default values, so keep_previous: 1 written out or left out give
// the same digest.
//
// The encoding is Ferry's own (length-prefixed fields), not protobuf's
// serialization, which is not guaranteed stable across library versions;
// stored digests must compare equal across controller upgrades.
func ContentDigest(p *ferryv1.Package) string {
	c := canon{h: sha256.New()}
	c.str("format", contentVersion)
	c.str("name", p.GetName())
	c.str("version", p.GetVersion())
	if a := p.GetArtifact(); a != nil {
		if a.GetDigest() != "" {
			// The digest fixes the bytes; name and size follow from it.
			c.str("artifact.digest", a.GetDigest())
		} else {
			c.str("artifact.ref", a.GetName())
		}
	}
	c.num("steps", uint64(len(p.GetSteps())))
	for _, s := range p.GetSteps() {
		name, k := kindOf(s)
		c.str("kind", string(name))
		if k != nil {
			k.Digest(&c, s)
		}
	}
	return "sha256:" + hex.EncodeToString(c.h.Sum(nil))
}

func orDefault(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

// canon writes key/value pairs, each length-prefixed, so that no two
// different packages share an encoding.
type canon struct {
	h   hash.Hash
	buf []byte
}

func (c *canon) bytes(key string, v []byte) {
	c.buf = binary.AppendUvarint(c.buf[:0], uint64(len(key)))
	c.buf = append(c.buf, key...)
	c.buf = binary.AppendUvarint(c.buf, uint64(len(v)))
	c.h.Write(c.buf)
	c.h.Write(v)
}

func (c *canon) str(key, v string) { c.bytes(key, []byte(v)) }

func (c *canon) num(key string, v uint64) { c.bytes(key, binary.AppendUvarint(nil, v)) }

func (c *canon) flag(key string, v bool) {
	var b byte
	if v {
		b = 1
	}
	c.bytes(key, []byte{b})
}

func (c *canon) list(key string, v []string) {
	c.num(key, uint64(len(v)))
	for _, s := range v {
		c.str(key+"[]", s)
	}
}
