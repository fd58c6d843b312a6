package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// docCommand finds a daemon's command line in the docs: the binary, an
// optional subcommand, and the rest of the line with its --flags.
// A command line goes on with flags (or "..."); prose that names a
// daemon does not.
var docCommand = regexp.MustCompile(`(ferry-controller|ferry-agent)((?: (?:backup|restore|enroll|run))?)( (?:--|\.\.\. )[^` + "`" + `|#\n]*)`)

var docFlag = regexp.MustCompile(`(?:^| )(--[a-z][a-z0-9-]*)`)

// TestDocsFlagsExist checks every --flag the README and docs/ pass to
// ferry-controller or ferry-agent against the built binary's --help, so
// the docs cannot name a flag the daemons do not have.
func TestDocsFlagsExist(t *testing.T) {
	bin := os.Getenv("FERRY_BIN")
	if bin == "" {
		t.Skip("FERRY_BIN is not set: run `make test`, or `make build` and set FERRY_BIN to the repository's bin folder")
	}
	files, err := filepath.Glob("../../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../../README.md")
	help := map[string]string{}
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(data), "\\\n", " ") // continuation lines
		for _, m := range docCommand.FindAllStringSubmatch(text, -1) {
			binary, sub := m[1], strings.TrimSpace(m[2])
			key := strings.TrimSpace(binary + " " + sub)
			if _, ok := help[key]; !ok {
				args := []string{"--help"}
				if sub != "" {
					args = []string{sub, "--help"}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				out, err := exec.CommandContext(ctx, filepath.Join(bin, binary), args...).CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("%s %s: %v\n%s", binary, strings.Join(args, " "), err, out)
				}
				help[key] = string(out)
			}
			for _, fm := range docFlag.FindAllStringSubmatch(m[3], -1) {
				checked++
				if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(fm[1]) + `\b`).MatchString(help[key]) {
					t.Errorf("%s: `%s` passes %s, which `%s --help` does not list", filepath.Base(f), strings.TrimSpace(m[0]), fm[1], key)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no daemon flags in the docs: the pattern no longer matches them")
	}
}
