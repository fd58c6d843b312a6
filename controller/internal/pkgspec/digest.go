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
// as written) and every step field, in step order. It does not depend on
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
		switch k := s.GetKind().(type) {
		case *ferryv1.Step_Archive:
			a := k.Archive
			c.str("kind", "archive")
			c.str("dest", a.GetDest())
			c.num("strip_components", uint64(a.GetStripComponents()))
			c.num("keep_previous", uint64(orDefault(a.GetKeepPrevious(), DefaultKeepPrevious)))
			c.flag("allow_setuid", a.GetAllowSetuid())
			c.num("max_bytes", a.GetMaxBytes())
			c.num("max_entries", a.GetMaxEntries())
			c.str("format", a.GetFormat())
		case *ferryv1.Step_Env:
			e := k.Env
			c.str("kind", "env")
			c.str("name", e.GetName())
			c.num("vars", uint64(len(e.GetVars())))
			for _, v := range e.GetVars() {
				c.str("var.name", v.GetName())
				c.str("var.value", v.GetValue())
			}
			c.list("path", e.GetPath())
		case *ferryv1.Step_Sudoers:
			c.str("kind", "sudoers")
			c.str("name", k.Sudoers.GetName())
			c.list("rules", k.Sudoers.GetRules())
		case *ferryv1.Step_File:
			f := k.File
			c.str("kind", "file")
			c.str("path", f.GetPath())
			c.bytes("content", f.GetContent())
			c.num("mode", uint64(orDefault(f.GetMode(), DefaultFileMode)))
			c.str("owner", f.GetOwner())
			c.str("group", f.GetGroup())
		case *ferryv1.Step_Check:
			ch := k.Check
			c.str("kind", "check")
			c.str("run", ch.GetRun())
			c.str("expect", ch.GetExpect())
			timeout := DefaultCheckTimeout
			if ch.GetTimeout() != nil {
				timeout = ch.GetTimeout().AsDuration()
			}
			c.num("timeout_ns", uint64(timeout))
		default:
			c.str("kind", "")
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
