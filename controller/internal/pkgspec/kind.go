package pkgspec

import (
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A kind is one kind of step in a package file. Each lives in a file of
// its own (kind_archive.go, kind_env.go, ...) and is registered in
// stepKinds under its field of the Step oneof, whose name is also the
// step's key in YAML and its kind in the content digest.
type kind interface {
	// Parse turns the value under the step's key into a Step, reporting
	// every problem to p at its line; path is the value's field path,
	// e.g. "steps[2].env". It returns a Step even when there were
	// problems.
	Parse(p *parser, n *yaml.Node, path string) *ferryv1.Step
	// Digest writes the step's fields, defaults filled in, to the
	// canonical encoding ContentDigest hashes. Stored digests depend on
	// it: change it only with contentVersion.
	Digest(c *canon, s *ferryv1.Step)
}

// The hooks below are optional: a kind has the ones it needs.

// A validator is a kind with rules across steps, checked as each of its
// steps is parsed (archive: one per package, and only with an artifact).
type validator interface {
	Validate(p *parser, r validateRequest)
}

// An artifactUser is a kind whose steps use the package's artifact; a
// package with an artifact needs one.
type artifactUser interface {
	UsesArtifact()
}

// A finalStep is a kind after whose step nothing can run (agent_update:
// the agent restarts).
type finalStep interface {
	Last()
}

func isFinal(s *ferryv1.Step) bool {
	_, k := kindOf(s)
	_, ok := k.(finalStep)
	return ok
}

// validateRequest is a parsed step in its package.
type validateRequest struct {
	// node is the step's mapping and path its kind's field path, e.g.
	// "steps[1].archive".
	node *yaml.Node
	path string
	// artifact is the package's artifact field, nil when it has none.
	artifact *yaml.Node
	// prior are the steps before it that could be parsed.
	prior []parsedStep
}

type parsedStep struct {
	step *ferryv1.Step
	path string // as in validateRequest
}

// stepOneof is the Step message's oneof of kinds.
var stepOneof = (&ferryv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")

// stepKinds is the registry: every kind of step a package file can have,
// under its field of the Step oneof. TestStepKindsRegistered fails when a
// field has no kind here.
var stepKinds = map[protoreflect.Name]kind{
	"archive":      archiveKind{},
	"env":          envKind{},
	"sudoers":      sudoersKind{},
	"file":         fileKind{},
	"check":        checkKind{},
	"service":      serviceKind{},
	"agent_update": agentUpdateKind{},
}

// kindNames lists the registered kinds in the oneof's order, the order
// they are listed in messages.
func kindNames() []string {
	var names []string
	fields := stepOneof.Fields()
	for f := 0; f < fields.Len(); f++ {
		if name := fields.Get(f).Name(); stepKinds[name] != nil {
			names = append(names, string(name))
		}
	}
	return names
}

// orList joins names as "a, b or c".
func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// kindOf returns a step's kind and its name; "" and nil for a step with
// no registered kind.
func kindOf(s *ferryv1.Step) (protoreflect.Name, kind) {
	fd := s.ProtoReflect().WhichOneof(stepOneof)
	if fd == nil || stepKinds[fd.Name()] == nil {
		return "", nil
	}
	return fd.Name(), stepKinds[fd.Name()]
}

func usesArtifact(s *ferryv1.Step) bool {
	_, k := kindOf(s)
	_, ok := k.(artifactUser)
	return ok
}
