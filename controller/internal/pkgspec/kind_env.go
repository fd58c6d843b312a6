package pkgspec

import (
	"fmt"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// envKind writes /etc/profile.d/<name>.sh.
type envKind struct{}

func (envKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Env{Env: p.env(n, path)}}
}

func (envKind) Digest(c *canon, s *ferryv1.Step) {
	e := s.GetEnv()
	c.str("name", e.GetName())
	c.num("vars", uint64(len(e.GetVars())))
	for _, v := range e.GetVars() {
		c.str("var.name", v.GetName())
		c.str("var.value", v.GetValue())
	}
	c.list("path", e.GetPath())
}

var envFields = []string{"name", "vars", "path"}

var envVarRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (p *parser) env(n *yaml.Node, path string) *ferryv1.EnvStep {
	st := &ferryv1.EnvStep{}
	f, ok := p.mapping(n, path, envFields, "e.g. env: {name: go, vars: {GOROOT: /usr/local/go}, path: [/usr/local/go/bin]}", "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "name", "set name to the file name under /etc/profile.d, without .sh, e.g. name: go"); ok {
		if s, ok := p.str(v, path+".name"); ok {
			switch {
			case strings.HasSuffix(s, ".sh") && fileNameRE.MatchString(strings.TrimSuffix(s, ".sh")):
				p.add(v, path+".name", fmt.Sprintf("%q ends in .sh", s), fmt.Sprintf("write name: %s; Ferry adds .sh", strings.TrimSuffix(s, ".sh")))
			case !fileNameRE.MatchString(s):
				p.add(v, path+".name", fmt.Sprintf("%q is not a valid env file name", s), "use 1 to 64 letters, digits, '_' and '-'")
			default:
				p.claim(v, path+".name", "/etc/profile.d/"+s+".sh", false)
			}
			st.Name = s
		}
	}
	if v := f["vars"].val; v != nil {
		st.Vars = p.envVars(v, path+".vars")
	}
	if v := f["path"].val; v != nil {
		st.Path = p.envPath(v, path+".path")
	}
	if len(st.Vars) == 0 && len(st.Path) == 0 && f["vars"].val == nil && f["path"].val == nil {
		p.add(n, path, "the env file would set nothing", "add vars (NAME: value) and/or path (directories to add to PATH)")
	}
	return st
}

func (p *parser) envVars(n *yaml.Node, path string) []*ferryv1.EnvVar {
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "expected a mapping of NAME: value, got "+describe(n), "e.g. vars: {GOROOT: /usr/local/go}")
		return nil
	}
	var vars []*ferryv1.EnvVar
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name, ok := p.key(k, path)
		if !ok {
			continue
		}
		field := path + "." + name
		if line, dup := seen[name]; dup {
			p.add(k, field, fmt.Sprintf("set twice (first on line %d)", line), "keep one")
			continue
		}
		seen[name] = k.Line
		if !envVarRE.MatchString(name) {
			p.add(k, field, fmt.Sprintf("%q is not a valid variable name", name), "use letters, digits and '_', not starting with a digit")
			continue
		}
		if r := installpolicy.EnvVar(name); r != nil {
			p.add(k, field, r.Problem, r.Fix)
			continue
		}
		if isNull(v) {
			p.add(v, field, "has no value", fmt.Sprintf("write %s: \"\" for an empty value", name))
			continue
		}
		s, ok := p.str(v, field)
		if !ok {
			continue
		}
		if strings.ContainsRune(s, 0) {
			p.add(v, field, "the value contains a NUL byte", "remove it; environment values cannot hold NUL")
			continue
		}
		vars = append(vars, &ferryv1.EnvVar{Name: name, Value: s})
	}
	return vars
}

func (p *parser) envPath(n *yaml.Node, path string) []string {
	items, ok := p.strList(n, path, "e.g. path: [/usr/local/go/bin]")
	if !ok {
		return nil
	}
	var dirs []string
	seen := map[string]int{}
	for i, s := range items {
		field := fmt.Sprintf("%s[%d]", path, i)
		v := n.Content[i]
		if line, dup := seen[s]; dup {
			p.add(v, field, fmt.Sprintf("%s is listed twice (first on line %d)", s, line), "keep one")
			continue
		}
		seen[s] = v.Line
		if !p.absPath(v, field, s) {
			continue
		}
		if strings.Contains(s, ":") {
			p.add(v, field, fmt.Sprintf("%q contains ':', the PATH separator", s), "list each directory as its own item")
			continue
		}
		dirs = append(dirs, s)
	}
	return dirs
}
