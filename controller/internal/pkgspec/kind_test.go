package pkgspec

import (
	"go/ast"
	goparser "go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// TestStepKindsRegistered fails when a kind of the Step oneof has no
// implementation in the registry, so a kind added to the proto cannot be
// missing from package files or the content digest.
func TestStepKindsRegistered(t *testing.T) {
	fields := stepOneof.Fields()
	if fields.Len() == 0 {
		t.Fatal("the Step oneof has no fields")
	}
	for f := 0; f < fields.Len(); f++ {
		fd := fields.Get(f)
		t.Run(string(fd.Name()), func(t *testing.T) {
			k, ok := stepKinds[fd.Name()]
			if !ok {
				t.Fatalf("Step.%s has no kind in stepKinds; add kind_%s.go", fd.Name(), fd.Name())
			}
			// Parse builds a step of its own field, whatever the input.
			p := &parser{file: "kind.yaml"}
			s := k.Parse(p, &yaml.Node{Kind: yaml.MappingNode}, "steps[0]."+string(fd.Name()))
			if got := s.ProtoReflect().WhichOneof(stepOneof); got != fd {
				t.Fatalf("%s's Parse built a step of kind %v", fd.Name(), got)
			}
			if name, got := kindOf(s); name != fd.Name() || got == nil {
				t.Fatalf("kindOf a %s step = %q, %v", fd.Name(), name, got)
			}
			// Digest separates the kind from an empty step.
			empty := &ferryv1.Step{}
			m := empty.ProtoReflect()
			m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
			if ContentDigest(&ferryv1.Package{Steps: []*ferryv1.Step{empty}}) == ContentDigest(&ferryv1.Package{Steps: []*ferryv1.Step{{}}}) {
				t.Errorf("an empty %s step digests like a step with no kind", fd.Name())
			}
		})
	}
	if got, want := strings.Join(kindNames(), ", "), "archive, env, sudoers, file, check, service, agent_update"; got != want {
		t.Errorf("kindNames = %s, want %s (the oneof's order, which messages use)", got, want)
	}
}

// TestOnlyTheRegistryDispatches fails when code outside a kind's own file
// picks a step's kind by hand (a type switch over Step.Kind, a
// Step_Archive, a GetArchive call, a "check" literal): the registry is
// the only dispatch, so a new kind is one file.
func TestOnlyTheRegistryDispatches(t *testing.T) {
	owner := map[string]string{} // identifier or literal -> the file allowed to use it
	for name := range stepKinds {
		file := "kind_" + string(name) + ".go"
		camel := strings.ToUpper(string(name[:1])) + string(name[1:])
		for _, use := range []string{"Step_" + camel, "Get" + camel, strconv.Quote(string(name))} {
			owner[use] = file
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") || file == "kind.go" { // kind.go holds the registry
			continue
		}
		f, err := goparser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			var use string
			switch n := n.(type) {
			case *ast.Ident:
				use = n.Name
			case *ast.BasicLit:
				use = n.Value
			case *ast.TypeAssertExpr:
				if isStepKind(n.X) {
					t.Errorf("%s: a type switch on a step's kind; use the registry (kindOf)", fset.Position(n.Pos()))
				}
			}
			if want, ok := owner[use]; ok && want != file {
				t.Errorf("%s: %s belongs in %s", fset.Position(n.Pos()), use, want)
			}
			return true
		})
	}
}

// isStepKind reports s.Kind and s.GetKind().
func isStepKind(e ast.Expr) bool {
	if c, ok := e.(*ast.CallExpr); ok {
		e = c.Fun
	}
	sel, ok := e.(*ast.SelectorExpr)
	return ok && (sel.Sel.Name == "Kind" || sel.Sel.Name == "GetKind")
}
