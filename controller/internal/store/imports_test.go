package store

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/deptest"
)

// TestOnlyStoreImportsBbolt keeps the buckets private to this package:
// every other package of the controller module reaches records through
// the store's methods. It parses the files rather than asking `go list`
// (deptest.List) because test files count too: a test that writes another
// domain's bucket is how the layering eroded before.
func TestOnlyStoreImportsBbolt(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == here || d.Name() == "testdata" || (strings.HasPrefix(d.Name(), ".") && path != root) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if deptest.Within(p, "go.etcd.io/bbolt") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s imports %s: only controller/internal/store may; use the store's methods for the records it needs", rel, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d Go files under %s; is the walk looking in the right place?", checked, root)
	}
}
