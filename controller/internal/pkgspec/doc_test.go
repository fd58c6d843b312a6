package pkgspec

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// TestDocExample keeps docs/packages.md honest: its complete package
// examples parse, and the Go toolchain one means what the page says.
func TestDocExample(t *testing.T) {
	doc := string(readFile(t, "../../../docs/packages.md"))
	var packages []string
	for _, block := range strings.Split(doc, "```yaml\n")[1:] {
		block, _, ok := strings.Cut(block, "```")
		if !ok {
			t.Fatal("unterminated yaml block in docs/packages.md")
		}
		packages = append(packages, block)
	}
	if len(packages) == 0 {
		t.Fatal("no yaml blocks in docs/packages.md")
	}
	for i, src := range packages {
		if _, err := Parse("docs/packages.md", []byte(src)); err != nil {
			t.Errorf("example %d: %v", i, err)
		}
	}
	got, err := Parse("go.yaml", []byte(packages[0]))
	if err != nil {
		t.Fatal(err)
	}
	got.Source = ""
	want := &ferryv1.Package{
		Name:     "go",
		Version:  "1.20.3",
		Artifact: &ferryv1.ArtifactRef{Name: "go1.20.3.linux-amd64.tar.gz"},
		Steps: []*ferryv1.Step{
			archiveStep(&ferryv1.ArchiveStep{Dest: "/usr/local/go", StripComponents: 1, KeepPrevious: 1}),
			envStep(&ferryv1.EnvStep{Name: "go", Vars: []*ferryv1.EnvVar{{Name: "GOROOT", Value: "/usr/local/go"}}, Path: []string{"/usr/local/go/bin"}}),
			sudoersStep(&ferryv1.SudoersStep{Name: "deploy", Rules: []string{"deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"}}),
			checkStep(&ferryv1.CheckStep{Run: "go version", Expect: "go1.20.3", Timeout: durationpb.New(30 * time.Second)}),
		},
	}
	if !proto.Equal(got, want) {
		t.Errorf("Go example:\ngot  %v\nwant %v", got, want)
	}
}
