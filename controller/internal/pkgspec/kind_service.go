package pkgspec

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// DefaultServiceTimeout is how long a service step waits for its unit to
// become active when the file sets no timeout.
const DefaultServiceTimeout = 30 * time.Second

// serviceKind restarts, reloads or enables a systemd unit on the node.
type serviceKind struct{}

func (serviceKind) Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_Service{Service: p.service(n, path)}}
}

func (serviceKind) Digest(c *canon, s *ferryv1.Step) {
	sv := s.GetService()
	c.str("unit", sv.GetUnit())
	action := sv.GetAction()
	if action == ferryv1.ServiceAction_SERVICE_ACTION_UNSPECIFIED {
		action = ferryv1.ServiceAction_SERVICE_ACTION_RESTART
	}
	c.num("action", uint64(action))
	timeout := DefaultServiceTimeout
	if sv.GetTimeout() != nil {
		timeout = sv.GetTimeout().AsDuration()
	}
	c.num("timeout_ns", uint64(timeout))
}

var serviceFields = []string{"unit", "action", "timeout"}

// serviceActions are the words a package file uses for ServiceAction.
var serviceActions = map[string]ferryv1.ServiceAction{
	"restart": ferryv1.ServiceAction_SERVICE_ACTION_RESTART,
	"reload":  ferryv1.ServiceAction_SERVICE_ACTION_RELOAD,
	"enable":  ferryv1.ServiceAction_SERVICE_ACTION_ENABLE,
}

var serviceActionWords = []string{"restart", "reload", "enable"}

func (p *parser) service(n *yaml.Node, path string) *ferryv1.ServiceStep {
	st := &ferryv1.ServiceStep{Action: ferryv1.ServiceAction_SERVICE_ACTION_RESTART, Timeout: durationpb.New(DefaultServiceTimeout)}
	f, ok := p.mapping(n, path, serviceFields, "e.g. service: {unit: myapp.service, action: restart, timeout: 30s}", "field")
	if !ok {
		return st
	}
	if v, ok := p.required(n, f, path, "unit", "set unit to the systemd unit to act on, e.g. unit: myapp.service"); ok {
		if s, ok := p.str(v, path+".unit"); ok {
			unit, r := installpolicy.ServiceUnit(s)
			if r != nil {
				p.add(v, path+".unit", r.Problem, r.Fix)
			}
			st.Unit = unit
		}
	}
	if v := f["action"].val; v != nil {
		if s, ok := p.str(v, path+".action"); ok {
			if a, known := serviceActions[strings.ToLower(s)]; known {
				st.Action = a
			} else {
				p.add(v, path+".action", fmt.Sprintf("%q is not a service action", s), suggest(s, serviceActionWords, "action"))
			}
		}
	}
	if v := f["timeout"].val; v != nil {
		if d, ok := p.duration(v, path+".timeout"); ok {
			st.Timeout = durationpb.New(d)
		}
	}
	return st
}
