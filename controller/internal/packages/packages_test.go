package packages

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

type resolver map[string]*ferryv1.Artifact

func (r resolver) ResolveArtifact(ref string) (*ferryv1.Artifact, error) {
	if a, ok := r[ref]; ok {
		return a, nil
	}
	return nil, store.ErrNotFound
}

const goYAML = `name: go
version: 1.20.3
artifact: go1.20.3.linux-amd64.tar.gz
steps:
  - archive: {dest: /usr/local/go, strip_components: 1}
  - env: {name: go, vars: {GOROOT: /usr/local/go}, path: [/usr/local/go/bin]}
  - check: {run: "go version", expect: "go1.20.3"}
`

func newStore(t *testing.T) *Store {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r := resolver{"go1.20.3.linux-amd64.tar.gz": {Digest: "sha256:" + strings.Repeat("ab", 32), Name: "go1.20.3.linux-amd64.tar.gz", Size: 100}}
	s, err := New(db, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestApply(t *testing.T) {
	s := newStore(t)
	p, created, err := s.Apply("go.yaml", []byte(goYAML), "admin/alice", nil)
	if err != nil || !created {
		t.Fatalf("first apply: created=%v err=%v", created, err)
	}
	if p.Artifact.Digest != "sha256:"+strings.Repeat("ab", 32) || p.ContentDigest == "" || p.CreatedBy != "admin/alice" {
		t.Errorf("stored package not resolved: %v", p)
	}
	// Identical content, formatted differently, is a no-op.
	reformatted := strings.Replace(goYAML, "name: go\n", "# the Go toolchain\nname:   go\n", 1)
	if _, created, err := s.Apply("go.yaml", []byte(reformatted), "admin/bob", nil); err != nil || created {
		t.Fatalf("re-apply: created=%v err=%v, want a no-op", created, err)
	}
	// Different content under the same version is refused, and the stored
	// version is untouched.
	changed := strings.Replace(goYAML, `expect: "go1.20.3"`, `expect: "go1.20"`, 1)
	_, _, err = s.Apply("go.yaml", []byte(changed), "admin/bob", nil)
	if err == nil || !strings.Contains(err.Error(), "immutable") || !strings.Contains(err.Error(), "go@1.20.3") {
		t.Fatalf("changed re-apply: %v, want an immutability error naming go@1.20.3", err)
	}
	got, err := s.Package("go", "1.20.3")
	if err != nil || got.ContentDigest != p.ContentDigest || got.CreatedBy != "admin/alice" {
		t.Errorf("stored package changed: %v %v", got, err)
	}
}

func TestApplyRefusesBadInput(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown artifact", strings.Replace(goYAML, "go1.20.3.linux-amd64.tar.gz", "nope.tar.gz", 1), "go.yaml:3"},
		{"unknown field", goYAML + "colour: blue\n", "go.yaml:8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			_, _, err := s.Apply("go.yaml", []byte(tc.yaml), "admin/alice", nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("apply: %v, want an error at %s", err, tc.want)
			}
			if ps, _ := s.Packages(""); len(ps) != 0 {
				t.Errorf("refused apply stored %d packages", len(ps))
			}
		})
	}
}
