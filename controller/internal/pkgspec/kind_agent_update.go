package pkgspec

import (
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// DefaultReconnectTimeout is how long a new agent has to reach the
// controller before the previous one is restored.
const DefaultReconnectTimeout = 60 * time.Second

// agentUpdateKind replaces the node's ferry-agent with the package's
// artifact, a ferry-agent binary.
type agentUpdateKind struct{}

func (agentUpdateKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_AgentUpdate{AgentUpdate: p.agentUpdate(n, path)}}
}

// UsesArtifact: the artifact is the new binary.
func (agentUpdateKind) UsesArtifact() {}

// Last: the agent restarts after the step, so nothing can follow it.
func (agentUpdateKind) Last() {}

// Validate requires the artifact, and no other step using it.
func (agentUpdateKind) Validate(p *parser, r validateRequest) {
	if r.artifact == nil {
		p.add(r.node, r.path, "an agent_update step needs the package's artifact", "set artifact: at the top level to the ferry-agent binary")
		return
	}
	for _, s := range r.prior {
		if usesArtifact(s.step) {
			p.add(r.node, r.path, "the artifact is also used by "+s.path, "a package that updates the agent carries only the ferry-agent binary; put the other steps in a package of their own")
			return
		}
	}
}

func (agentUpdateKind) Digest(c *canon, s *ferryv1.Step) {
	u := s.GetAgentUpdate()
	c.str("expect_version", u.GetExpectVersion())
	timeout := DefaultReconnectTimeout
	if u.GetReconnectTimeout() != nil {
		timeout = u.GetReconnectTimeout().AsDuration()
	}
	c.num("reconnect_timeout_ns", uint64(timeout))
}

var agentUpdateFields = []string{"expect_version", "reconnect_timeout"}

// maxReconnectTimeout bounds how long a node may run an agent that has
// not reached the controller.
const maxReconnectTimeout = 30 * time.Minute

func (p *parser) agentUpdate(n *yaml.Node, path string) *ferryv1.AgentUpdateStep {
	st := &ferryv1.AgentUpdateStep{ReconnectTimeout: durationpb.New(DefaultReconnectTimeout)}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return st // agent_update: {} written as agent_update:
	}
	f, ok := p.mapping(n, path, agentUpdateFields, `e.g. agent_update: {expect_version: 1.4.0, reconnect_timeout: 60s}`, "field")
	if !ok {
		return st
	}
	if v := f["expect_version"].val; v != nil {
		if s, ok := p.str(v, path+".expect_version"); ok {
			if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				p.add(v, path+".expect_version", "contains a control character", "write the version as printed by ferry-agent --version, e.g. 1.4.0")
			}
			st.ExpectVersion = s
		}
	}
	if v := f["reconnect_timeout"].val; v != nil {
		if d, ok := p.duration(v, path+".reconnect_timeout"); ok {
			if d < 5*time.Second || d > maxReconnectTimeout {
				p.add(v, path+".reconnect_timeout", "must be between 5s and 30m", "e.g. reconnect_timeout: 60s")
			}
			st.ReconnectTimeout = durationpb.New(d)
		}
	}
	return st
}
