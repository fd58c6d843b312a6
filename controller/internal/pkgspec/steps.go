package pkgspec

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

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
	var parsed []parsedStep
	broken := false // a step too malformed to know its kind
	for i, sn := range n.Content {
		st, path := p.step(sn, fmt.Sprintf("steps[%d]", i))
		if st == nil {
			broken = true
			continue
		}
		if len(parsed) > 0 && isFinal(parsed[len(parsed)-1].step) {
			p.add(sn, path, "a step after "+parsed[len(parsed)-1].path, "the agent restarts after it; make it the package's last step")
		}
		_, k := kindOf(st)
		if v, ok := k.(validator); ok {
			v.Validate(p, validateRequest{node: sn, path: path, artifact: artifact, prior: parsed})
		}
		parsed = append(parsed, parsedStep{step: st, path: path})
		steps = append(steps, st)
	}
	if artifact != nil && !broken && !slices.ContainsFunc(steps, usesArtifact) {
		p.add(artifact, "artifact", "no step uses the artifact", "add an archive step to extract it (or agent_update for a ferry-agent binary), or remove artifact:")
	}
	return steps
}

// step parses one step; path is its field path, e.g. "steps[2]". It
// returns the step (nil when it is too malformed to know its kind) and
// the path of its kind's field, e.g. "steps[2].env".
func (p *parser) step(n *yaml.Node, path string) (*ferryv1.Step, string) {
	names := kindNames()
	kinds := orList(names)
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "expected a step, got "+describe(n), "a step is a mapping with one kind ("+kinds+"), e.g. - check: {run: go version}")
		return nil, ""
	}
	f, ok := p.mapping(n, path, names, "", "step kind")
	if !ok {
		return nil, ""
	}
	var present []string // in the order written
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i].Value; slices.Contains(names, k) && !slices.Contains(present, k) {
			present = append(present, k)
		}
	}
	switch {
	case len(f) == 0 && len(n.Content) == 0:
		p.add(n, path, "empty step", "give it one kind: "+kinds)
		return nil, ""
	case len(present) == 0:
		return nil, "" // unknown kind, already reported
	case len(present) > 1:
		p.add(n, path, fmt.Sprintf("a step has exactly one kind, got %s", strings.Join(present, " and ")), "make each kind its own list item")
		return nil, ""
	}
	name := present[0]
	path += "." + name
	return stepKinds[protoreflect.Name(name)].Parse(p, f[name].val, path), path
}

// fileNameRE is a name that becomes a file name in a fixed directory
// (/etc/profile.d, /etc/sudoers.d).
var fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

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
