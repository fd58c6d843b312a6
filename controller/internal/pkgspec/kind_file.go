package pkgspec

import (
	"fmt"
	"regexp"

	"go.yaml.in/yaml/v3"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// fileKind writes a file with its content, mode and owner.
type fileKind struct{}

func (fileKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_File{File: p.fileStep(n, path)}}
}

func (fileKind) Digest(c *canon, s *ferryv1.Step) {
	f := s.GetFile()
	c.str("path", f.GetPath())
	c.bytes("content", f.GetContent())
	c.num("mode", uint64(orDefault(f.GetMode(), DefaultFileMode)))
	c.str("owner", f.GetOwner())
	c.str("group", f.GetGroup())
	if f.GetAllowSensitive() {
		// Written only when set, so the digests of packages stored before
		// the field existed do not change.
		c.flag("allow_sensitive", true)
	}
}

var fileFields = []string{"path", "content", "mode", "owner", "group", "allow_sensitive"}

var ownerRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)

func (p *parser) fileStep(n *yaml.Node, path string) *ferryv1.FileStep {
	st := &ferryv1.FileStep{Mode: DefaultFileMode}
	f, ok := p.mapping(n, path, fileFields, `e.g. file: {path: /etc/myapp/config, content: "...", mode: "0644"}`, "field")
	if !ok {
		return st
	}
	if v := f["allow_sensitive"].val; v != nil {
		st.AllowSensitive = p.bool(v, path+".allow_sensitive")
	}
	if v, ok := p.required(n, f, path, "path", "set path to the absolute file path, e.g. /etc/myapp/config"); ok {
		if s, ok := p.str(v, path+".path"); ok {
			if p.absPath(v, path+".path", s) {
				// By name: the node resolves symbolic links and checks again.
				if r := installpolicy.FilePath(s, "", st.AllowSensitive); r != nil {
					p.add(v, path+".path", r.Problem, r.Fix)
				} else {
					p.claim(v, path+".path", s, false)
				}
			}
			st.Path = s
		}
	}
	if v, ok := p.required(n, f, path, "content", `set the file's content; write content: "" for an empty file`); ok {
		st.Content, _ = p.content(v, path+".content")
	}
	if v := f["mode"].val; v != nil {
		if m, ok := p.mode(v, path+".mode"); ok {
			st.Mode = m
		}
	}
	for _, k := range []string{"owner", "group"} {
		v := f[k].val
		if v == nil {
			continue
		}
		s, ok := p.str(v, path+"."+k)
		if !ok {
			continue
		}
		if !ownerRE.MatchString(s) {
			p.add(v, path+"."+k, fmt.Sprintf("%q is not a valid %s name", s, map[string]string{"owner": "user", "group": "group"}[k]), "use a name like root or deploy, or a numeric id")
			continue
		}
		if k == "owner" {
			st.Owner = s
		} else {
			st.Group = s
		}
	}
	return st
}
