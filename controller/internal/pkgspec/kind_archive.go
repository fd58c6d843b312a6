package pkgspec

import (
	"fmt"

	"go.yaml.in/yaml/v3"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// archiveKind extracts the package's artifact into a directory of its own.
type archiveKind struct{}

func (archiveKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: p.archive(n, path)}}
}

// UsesArtifact: the archive step is what extracts the artifact.
func (archiveKind) UsesArtifact() {}

// Validate allows one archive step per package, and only with an
// artifact.
func (archiveKind) Validate(p *parser, r validateRequest) {
	first := ""
	for _, s := range r.prior {
		if s.step.GetArchive() != nil {
			first = s.path
			break
		}
	}
	switch {
	case first != "":
		p.add(r.node, r.path, "a second archive step (the first is "+first+")", "a package has one artifact and one archive step; split it into two packages")
	case r.artifact == nil:
		p.add(r.node, r.path, "an archive step needs the package's artifact", "set artifact: at the top level to the artifact to extract")
	}
}

func (archiveKind) Digest(c *canon, s *ferryv1.Step) {
	a := s.GetArchive()
	c.str("dest", a.GetDest())
	c.num("strip_components", uint64(a.GetStripComponents()))
	c.num("keep_previous", uint64(orDefault(a.GetKeepPrevious(), DefaultKeepPrevious)))
	c.flag("allow_setuid", a.GetAllowSetuid())
	c.num("max_bytes", a.GetMaxBytes())
	c.num("max_entries", a.GetMaxEntries())
	c.str("format", a.GetFormat())
}

var archiveFields = []string{"dest", "strip_components", "keep_previous", "allow_setuid", "max_bytes", "max_entries", "format"}

func (p *parser) archive(n *yaml.Node, path string) *ferryv1.ArchiveStep {
	st := &ferryv1.ArchiveStep{KeepPrevious: DefaultKeepPrevious}
	f, ok := p.mapping(n, path, archiveFields, "e.g. archive: {dest: /usr/local/go, strip_components: 1}", "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "dest", "set dest to the directory to extract into, e.g. /usr/local/go"); ok {
		if s, ok := p.str(v, path+".dest"); ok {
			if p.absPath(v, path+".dest", s) {
				// By name: the node resolves symbolic links and checks again.
				if r := installpolicy.ArchiveDest(s, ""); r != nil {
					p.add(v, path+".dest", r.Problem, r.Fix)
				} else {
					p.claim(v, path+".dest", s, true)
				}
			}
			st.Dest = s
		}
	}
	if v := f["strip_components"].val; v != nil {
		if u, ok := p.uint(v, path+".strip_components", 0, 255); ok {
			st.StripComponents = uint32(u) //nolint:gosec // p.uint checked 0..255
		}
	}
	if v := f["keep_previous"].val; v != nil {
		if u, ok := p.uint(v, path+".keep_previous", 0, MaxKeepPrevious); ok {
			if u == 0 {
				p.add(v, path+".keep_previous", "0 would leave nothing to roll back to", fmt.Sprintf("keep at least 1 (and at most %d) previous versions", MaxKeepPrevious))
			}
			st.KeepPrevious = uint32(u) //nolint:gosec // p.uint checked 0..MaxKeepPrevious
		}
	}
	if v := f["allow_setuid"].val; v != nil {
		st.AllowSetuid = p.bool(v, path+".allow_setuid")
	}
	if v := f["max_bytes"].val; v != nil {
		st.MaxBytes, _ = p.size(v, path+".max_bytes")
	}
	if v := f["max_entries"].val; v != nil {
		st.MaxEntries, _ = p.uint(v, path+".max_entries", 1, 1<<40)
	}
	if v := f["format"].val; v != nil {
		if s, ok := p.str(v, path+".format"); ok {
			switch s {
			case "tar", "tar.gz", "zip":
				st.Format = s
			case "tgz":
				st.Format = "tar.gz"
			default:
				p.add(v, path+".format", fmt.Sprintf("unknown archive format %q", s), "use tar, tar.gz or zip, or leave format out to detect it")
			}
		}
	}
	return st
}
