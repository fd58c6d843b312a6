package install

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// TestStepKindsRegistered fails when a kind of the Step oneof has no
// implementation in the registry, so a new kind in the proto cannot be
// silently refused (or half handled) by the agent.
func TestStepKindsRegistered(t *testing.T) {
	i := newEnv(t).inst
	fields := stepOneof.Fields()
	if fields.Len() == 0 {
		t.Fatal("the Step oneof has no fields")
	}
	changes := map[string]protoreflect.Name{}
	for f := 0; f < fields.Len(); f++ {
		fd := fields.Get(f)
		t.Run(string(fd.Name()), func(t *testing.T) {
			if _, ok := stepKinds(i)[fd.Name()]; !ok {
				t.Fatalf("Step.%s has no kind in stepKinds; add step_%s.go", fd.Name(), fd.Name())
			}
			m := (&ferryv1.Step{}).ProtoReflect()
			m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
			s := m.Interface().(*ferryv1.Step)
			name, k := i.kindOf(s)
			if name != fd.Name() || k == nil {
				t.Fatalf("kindOf a %s step = %q, %v", fd.Name(), name, k)
			}
			if got := i.kindName(s); got != string(fd.Name()) {
				t.Errorf("kindName = %q, want %q", got, fd.Name())
			}
			if got := i.describe(s); !strings.HasPrefix(got, string(fd.Name())) {
				t.Errorf("describe = %q, want it to start with %q", got, fd.Name())
			}
			if u, ok := k.(undoer); ok {
				if other, dup := changes[u.Change()]; dup {
					t.Errorf("%s and %s both journal their changes as %q", other, fd.Name(), u.Change())
				}
				changes[u.Change()] = fd.Name()
			}
		})
	}
	for _, s := range []*ferryv1.Step{nil, {}} {
		if got := i.describe(s); got != "unknown step" {
			t.Errorf("describe(%v) = %q", s, got)
		}
		if got := i.kindName(s); got != "unknown" {
			t.Errorf("kindName(%v) = %q", s, got)
		}
	}
	if got, want := i.validateStep(Request{}, &ferryv1.Step{}).Error(), "step has no kind (archive, env, sudoers, file, check, service or agent_update)"; got != want {
		t.Errorf("validateStep of a step with no kind: %q, want %q", got, want)
	}
}

// TestOnlyTheRegistryDispatches fails when code outside a kind's own file
// picks a step's kind by hand (a type switch over Step.Kind, a
// Step_Archive, a GetArchive call) or branches on a journaled change's
// kind: the registry is the only dispatch, so a new kind is one file.
func TestOnlyTheRegistryDispatches(t *testing.T) {
	kinds := stepKinds(nil)
	owner := map[string]string{} // identifier or literal -> the file allowed to use it
	for name, k := range kinds {
		file := "step_" + string(name) + ".go"
		camel := goCamel(string(name))
		owner["Step_"+camel] = file
		owner["Get"+camel] = file
		if u, ok := k.(undoer); ok {
			owner[strconv.Quote(u.Change())] = file
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, file, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			var name string
			switch n := n.(type) {
			case *ast.Ident:
				name = n.Name
			case *ast.BasicLit:
				if file != "step.go" { // the registry's keys
					name = n.Value
				}
			case *ast.TypeSwitchStmt:
				if isKindField(switchedType(n)) {
					t.Errorf("%s: a type switch on a step's kind; use the registry (kindOf)", fset.Position(n.Pos()))
				}
			case *ast.SwitchStmt:
				if isKindField(n.Tag) {
					t.Errorf("%s: a switch on a kind; use the registry (kindOf, undoer)", fset.Position(n.Pos()))
				}
			case *ast.BinaryExpr:
				if isKindField(n.X) || isKindField(n.Y) {
					t.Errorf("%s: a comparison of a kind; use the registry (kindOf, undoer)", fset.Position(n.Pos()))
				}
			}
			if want, ok := owner[name]; ok && want != file {
				t.Errorf("%s: %s belongs in %s", fset.Position(n.Pos()), name, want)
			}
			return true
		})
	}
}

// switchedType is x in switch x.(type).
func switchedType(s *ast.TypeSwitchStmt) ast.Expr {
	var e ast.Expr
	switch a := s.Assign.(type) {
	case *ast.ExprStmt:
		e = a.X
	case *ast.AssignStmt:
		e = a.Rhs[0]
	}
	if ta, ok := e.(*ast.TypeAssertExpr); ok {
		return ta.X
	}
	return nil
}

// isKindField reports x.Kind and x.GetKind().
func isKindField(e ast.Expr) bool {
	if c, ok := e.(*ast.CallExpr); ok {
		e = c.Fun
	}
	sel, ok := e.(*ast.SelectorExpr)
	return ok && (sel.Sel.Name == "Kind" || sel.Sel.Name == "GetKind")
}

// goCamel is the Go name protoc-gen-go gives a field: service_unit ->
// ServiceUnit.
func goCamel(name string) string {
	var b strings.Builder
	for _, part := range strings.Split(name, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}
