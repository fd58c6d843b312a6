package pkgspec

import (
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// checkKind runs a command on the node and checks its result.
type checkKind struct{}

func (checkKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Check{Check: p.check(n, path)}}
}

func (checkKind) Digest(c *canon, s *ferryv1.Step) {
	ch := s.GetCheck()
	c.str("run", ch.GetRun())
	c.str("expect", ch.GetExpect())
	timeout := DefaultCheckTimeout
	if ch.GetTimeout() != nil {
		timeout = ch.GetTimeout().AsDuration()
	}
	c.num("timeout_ns", uint64(timeout))
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
