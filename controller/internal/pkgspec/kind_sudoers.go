package pkgspec

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// sudoersKind writes /etc/sudoers.d/<name>.
type sudoersKind struct{}

func (sudoersKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Sudoers{Sudoers: p.sudoers(n, path)}}
}

func (sudoersKind) Digest(c *canon, s *ferryv1.Step) {
	c.str("name", s.GetSudoers().GetName())
	c.list("rules", s.GetSudoers().GetRules())
}

var sudoersFields = []string{"name", "rules"}

func (p *parser) sudoers(n *yaml.Node, path string) *ferryv1.SudoersStep {
	st := &ferryv1.SudoersStep{}
	f, ok := p.mapping(n, path, sudoersFields, `e.g. sudoers: {name: deploy, rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "name", "set name to the file name under /etc/sudoers.d, e.g. name: deploy"); ok {
		if s, ok := p.str(v, path+".name"); ok {
			switch {
			case strings.Contains(s, "/"):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid sudoers file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			case strings.Contains(s, "."):
				p.add(v, path+".name", fmt.Sprintf("%q contains '.', and sudo silently ignores such files in /etc/sudoers.d", s), "use a name without '.', e.g. "+strings.ReplaceAll(s, ".", "-"))
			case strings.HasSuffix(s, "~"):
				p.add(v, path+".name", fmt.Sprintf("%q ends in '~', and sudo silently ignores such files in /etc/sudoers.d", s), "drop the '~'")
			case !fileNameRE.MatchString(s):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid sudoers file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			default:
				p.claim(v, path+".name", "/etc/sudoers.d/"+s, false)
			}
			st.Name = s
		}
	}
	if v, ok := p.required(n, f, path, "rules", `add the sudoers lines, e.g. rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]`); ok {
		items, ok := p.strList(v, path+".rules", `e.g. rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]`)
		if ok && len(items) == 0 {
			p.add(v, path+".rules", "no rules", "add at least one sudoers line")
		}
		for i, s := range items {
			field := fmt.Sprintf("%s.rules[%d]", path, i)
			rn := v.Content[i]
			trimmed := strings.TrimSpace(s)
			switch {
			case trimmed == "":
				p.add(rn, field, "empty rule", "remove it")
				continue
			case strings.ContainsAny(s, "\n\r"):
				p.add(rn, field, "a rule spans several lines", "write each sudoers line as its own list item")
				continue
			case hasControl(s, "\t"):
				p.add(rn, field, "the rule contains control characters", "remove them")
				continue
			case isInclude(trimmed):
				p.add(rn, field, "include directives are not allowed in a fragment", "write the rules themselves so Ferry can validate them")
				continue
			}
			st.Rules = append(st.Rules, s)
		}
	}
	return st
}

func isInclude(rule string) bool {
	for _, d := range []string{"#include", "@include"} {
		if strings.HasPrefix(rule, d) {
			return true
		}
	}
	return false
}
