package pkgspec

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func (p *parser) steps(n *yaml.Node, artifact *yaml.Node) []*ferryv1.Step {
	if n.Kind != yaml.SequenceNode {
		p.add(n, "steps", "expected a list of steps, got "+describe(n), "write each step as a list item starting with '-'")
		return nil
	}
	if len(n.Content) == 0 {
		p.add(n, "steps", "no steps", "add at least one step")
		return nil
	}
	if len(n.Content) > MaxSteps {
		p.add(n, "steps", fmt.Sprintf("%d steps, more than the %d allowed", len(n.Content), MaxSteps), "split the package")
		return nil
	}
	var steps []*ferryv1.Step
	var firstArchive string
	broken := false // a step too malformed to know its kind
	for i, sn := range n.Content {
		path := fmt.Sprintf("steps[%d]", i)
		st := p.step(sn, path)
		if st == nil {
			broken = true
			continue
		}
		if st.GetArchive() != nil {
			switch {
			case firstArchive != "":
				p.add(sn, path+".archive", "a second archive step (the first is "+firstArchive+")", "a package has one artifact and one archive step; split it into two packages")
			case artifact == nil:
				p.add(sn, path+".archive", "an archive step needs the package's artifact", "set artifact: at the top level to the artifact to extract")
			}
			if firstArchive == "" {
				firstArchive = path + ".archive"
			}
		}
		steps = append(steps, st)
	}
	if artifact != nil && firstArchive == "" && !broken {
		p.add(artifact, "artifact", "no archive step uses the artifact", "add an archive step to extract it, or remove artifact:")
	}
	return steps
}

var stepKinds = []string{"archive", "env", "sudoers", "file", "check"}

func (p *parser) step(n *yaml.Node, path string) *ferryv1.Step {
	const kinds = "archive, env, sudoers, file or check"
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "expected a step, got "+describe(n), "a step is a mapping with one kind ("+kinds+"), e.g. - check: {run: go version}")
		return nil
	}
	f, ok := p.mapping(n, path, stepKinds, "", "step kind")
	if !ok {
		return nil
	}
	var present []string // in the order written
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i].Value; slices.Contains(stepKinds, k) && !slices.Contains(present, k) {
			present = append(present, k)
		}
	}
	switch {
	case len(f) == 0 && len(n.Content) == 0:
		p.add(n, path, "empty step", "give it one kind: "+kinds)
		return nil
	case len(present) == 0:
		return nil // unknown kind, already reported
	case len(present) > 1:
		p.add(n, path, fmt.Sprintf("a step has exactly one kind, got %s", strings.Join(present, " and ")), "make each kind its own list item")
		return nil
	}
	kind := present[0]
	v := f[kind].val
	path += "." + kind
	switch kind {
	case "archive":
		return &ferryv1.Step{Kind: &ferryv1.Step_Archive{Archive: p.archive(v, path)}}
	case "env":
		return &ferryv1.Step{Kind: &ferryv1.Step_Env{Env: p.env(v, path)}}
	case "sudoers":
		return &ferryv1.Step{Kind: &ferryv1.Step_Sudoers{Sudoers: p.sudoers(v, path)}}
	case "file":
		return &ferryv1.Step{Kind: &ferryv1.Step_File{File: p.file_(v, path)}}
	default:
		return &ferryv1.Step{Kind: &ferryv1.Step_Check{Check: p.check(v, path)}}
	}
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
				if isSystemDir(s) {
					p.add(v, path+".dest", fmt.Sprintf("%s is a system directory; the archive step replaces dest as a whole", s), "extract into a directory of its own, e.g. /usr/local/NAME or /opt/NAME")
				} else {
					p.claim(v, path+".dest", s, true)
				}
			}
			st.Dest = s
		}
	}
	if v := f["strip_components"].val; v != nil {
		if u, ok := p.uint(v, path+".strip_components", 0, 255); ok {
			st.StripComponents = uint32(u)
		}
	}
	if v := f["keep_previous"].val; v != nil {
		if u, ok := p.uint(v, path+".keep_previous", 0, MaxKeepPrevious); ok {
			if u == 0 {
				p.add(v, path+".keep_previous", "0 would leave nothing to roll back to", fmt.Sprintf("keep at least 1 (and at most %d) previous versions", MaxKeepPrevious))
			}
			st.KeepPrevious = uint32(u)
		}
	}
	if v := f["allow_setuid"].val; v != nil {
		st.AllowSetuid, _ = p.bool(v, path+".allow_setuid")
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

// isSystemDir reports directories an archive step must never replace
// wholesale.
func isSystemDir(p string) bool {
	if strings.Count(p, "/") == 1 { // "/", "/usr", "/opt", ...
		return true
	}
	return slices.Contains([]string{
		"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec",
		"/usr/include", "/usr/share", "/usr/src", "/usr/local",
		"/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/lib64",
		"/usr/local/libexec", "/usr/local/include", "/usr/local/share", "/usr/local/etc", "/usr/local/src",
		"/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/tmp", "/var/run", "/var/mail", "/var/opt",
		"/etc/profile.d", "/etc/sudoers.d", "/etc/systemd", "/etc/ssh", "/etc/ssl", "/etc/pam.d", "/etc/security",
	}, p)
}

var envFields = []string{"name", "vars", "path"}

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	envVarRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

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
		switch {
		case name == "PATH":
			p.add(k, field, "PATH cannot be set directly", "use env.path to add directories")
			continue
		case !envVarRE.MatchString(name):
			p.add(k, field, fmt.Sprintf("%q is not a valid variable name", name), "use letters, digits and '_', not starting with a digit")
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

var fileFields = []string{"path", "content", "mode", "owner", "group"}

var ownerRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)

func (p *parser) file_(n *yaml.Node, path string) *ferryv1.FileStep {
	st := &ferryv1.FileStep{Mode: DefaultFileMode}
	f, ok := p.mapping(n, path, fileFields, `e.g. file: {path: /etc/myapp/config, content: "...", mode: "0644"}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "path", "set path to the absolute file path, e.g. /etc/myapp/config"); ok {
		if s, ok := p.str(v, path+".path"); ok {
			if p.absPath(v, path+".path", s) {
				switch {
				case s == "/":
					p.add(v, path+".path", "/ is a directory", "name the file to write")
				case s == "/etc/sudoers" || strings.HasPrefix(s, "/etc/sudoers.d/"):
					p.add(v, path+".path", "sudoers files cannot be written with a file step", "use a sudoers step, which validates the rules before writing them")
				default:
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

var checkFields = []string{"run", "expect", "timeout"}

func (p *parser) check(n *yaml.Node, path string) *ferryv1.CheckStep {
	st := &ferryv1.CheckStep{Timeout: durationpb.New(DefaultCheckTimeout)}
	f, ok := p.mapping(n, path, checkFields, `e.g. check: {run: go version, expect: go1.20.3}`, "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "run", "set run to the command to run, e.g. run: go version"); ok {
		if s, ok := p.str(v, path+".run"); ok {
			switch {
			case strings.TrimSpace(s) == "":
				p.add(v, path+".run", "empty command", "set run to the command to run, e.g. run: go version")
			case strings.ContainsRune(s, 0):
				p.add(v, path+".run", "the command contains a NUL byte", "remove it")
			}
			st.Run = s
		}
	}
	if v := f["expect"].val; v != nil {
		if s, ok := p.str(v, path+".expect"); ok {
			if strings.ContainsRune(s, 0) {
				p.add(v, path+".expect", "contains a NUL byte", "remove it")
			}
			st.Expect = s
		}
	}
	if v := f["timeout"].val; v != nil {
		if d, ok := p.duration(v, path+".timeout"); ok {
			st.Timeout = durationpb.New(d)
		}
	}
	return st
}

// claim records that a step writes path and refuses a path another step
// already writes, or one inside (or above) another step's path.
func (p *parser) claim(n *yaml.Node, field, path string, archive bool) {
	for _, t := range p.targets {
		same := t.path == path
		inside := strings.HasPrefix(path, t.path+"/") || strings.HasPrefix(t.path, path+"/")
		if !same && !inside {
			continue
		}
		problem := fmt.Sprintf("%s is also written by %s (line %d)", path, t.field, t.line)
		if !same {
			problem = fmt.Sprintf("%s overlaps %s written by %s (line %d)", path, t.path, t.field, t.line)
		}
		fix := "each path can be written by one step only"
		if (archive || t.archive) && !same {
			fix = "the archive step replaces its dest as a whole; put the file outside it or in the archive"
		}
		p.add(n, field, problem, fix)
		return
	}
	p.targets = append(p.targets, target{path: path, field: field, line: n.Line, archive: archive})
}
