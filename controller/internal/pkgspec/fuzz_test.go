package pkgspec

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
)

// FuzzParse checks that Parse never panics, that every error it returns
// names the file and a line inside it and says how to fix the problem, and
// that every package it accepts keeps the promises the agent relies on.
// Interesting inputs live in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/valid/*.yaml", "testdata/invalid/*.yaml", "testdata/digest/*.yaml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			checkFuzzError(t, data, p, err)
			return
		}
		checkPackage(t, p)
		if _, err := proto.Marshal(p); err != nil {
			t.Fatalf("accepted package does not marshal: %v", err)
		}
		again, err := Parse("again.yaml", data)
		if err != nil || ContentDigest(again) != ContentDigest(p) {
			t.Fatalf("parsing twice differs: %v", err)
		}
	})
}

func checkFuzzError(t *testing.T, data []byte, p *ferryv1.Package, err error) {
	t.Helper()
	if p != nil {
		t.Fatal("Parse returned a package and an error")
	}
	var list ErrorList
	if !errors.As(err, &list) || len(list) == 0 || len(list) > maxErrors+1 {
		t.Fatalf("error is not a non-empty ErrorList of at most %d: %T %v", maxErrors+1, err, err)
	}
	lines := countLines(data)
	for _, e := range list {
		if e.File != "fuzz.yaml" || e.Problem == "" || e.Fix == "" {
			t.Fatalf("incomplete error: %+v", e)
		}
		if e.Line < 0 || e.Line > lines+1 {
			t.Fatalf("error on line %d of a %d-line file: %v", e.Line, lines, e)
		}
		if !strings.HasPrefix(e.Error(), "fuzz.yaml:") {
			t.Fatalf("error does not start with the file name: %v", e)
		}
	}
}

// checkPackage asserts what Parse promises about any package it accepts.
func checkPackage(t *testing.T, p *ferryv1.Package) {
	t.Helper()
	if !nameRE.MatchString(p.Name) || !versionRE.MatchString(p.Version) {
		t.Fatalf("accepted name %q version %q", p.Name, p.Version)
	}
	if len(p.Steps) == 0 || len(p.Steps) > MaxSteps {
		t.Fatalf("accepted %d steps", len(p.Steps))
	}
	archives := 0
	cleanAbs := func(s string) {
		if s == "" || s[0] != '/' || path.Clean(s) != s || strings.Contains(s, "..") && slices.Contains(strings.Split(s, "/"), "..") || hasControl(s, "") {
			t.Fatalf("accepted path %q", s)
		}
	}
	for i, s := range p.Steps {
		switch k := s.Kind.(type) {
		case *ferryv1.Step_Archive:
			archives++
			cleanAbs(k.Archive.Dest)
			if installpolicy.ArchiveDest(k.Archive.Dest, "") != nil || k.Archive.KeepPrevious < 1 || k.Archive.KeepPrevious > MaxKeepPrevious {
				t.Fatalf("accepted archive %v", k.Archive)
			}
		case *ferryv1.Step_Env:
			if !fileNameRE.MatchString(k.Env.Name) {
				t.Fatalf("accepted env name %q", k.Env.Name)
			}
			for _, v := range k.Env.Vars {
				if !envVarRE.MatchString(v.Name) || installpolicy.EnvVar(v.Name) != nil || strings.ContainsRune(v.Value, 0) {
					t.Fatalf("accepted env var %q=%q", v.Name, v.Value)
				}
			}
			for _, d := range k.Env.Path {
				cleanAbs(d)
				if strings.Contains(d, ":") {
					t.Fatalf("accepted PATH entry %q", d)
				}
			}
		case *ferryv1.Step_Sudoers:
			n := k.Sudoers.Name
			if n == "" || strings.ContainsAny(n, "./") || strings.HasSuffix(n, "~") || len(k.Sudoers.Rules) == 0 {
				t.Fatalf("accepted sudoers %v", k.Sudoers)
			}
			for _, r := range k.Sudoers.Rules {
				if strings.ContainsAny(r, "\n\r\x00") || strings.TrimSpace(r) == "" {
					t.Fatalf("accepted sudoers rule %q", r)
				}
			}
		case *ferryv1.Step_File:
			cleanAbs(k.File.Path)
			if k.File.Mode == 0 || k.File.Mode > 0o7777 || len(k.File.Content) > MaxContentSize || installpolicy.FilePath(k.File.Path, "", k.File.AllowSensitive) != nil {
				t.Fatalf("accepted file %v", k.File)
			}
		case *ferryv1.Step_Check:
			d := k.Check.Timeout.AsDuration()
			if strings.TrimSpace(k.Check.Run) == "" || d <= 0 || d > MaxCheckTimeout {
				t.Fatalf("accepted check %v", k.Check)
			}
		case *ferryv1.Step_Service:
			d := k.Service.Timeout.AsDuration()
			if u, r := installpolicy.ServiceUnit(k.Service.Unit); r != nil || u != k.Service.Unit || d <= 0 || d > MaxCheckTimeout ||
				k.Service.Action == ferryv1.ServiceAction_SERVICE_ACTION_UNSPECIFIED {
				t.Fatalf("accepted service %v", k.Service)
			}
		default:
			t.Fatalf("step %d has no kind", i)
		}
	}
	if archives > 1 || (archives == 1) != (p.Artifact != nil) {
		t.Fatalf("accepted %d archive steps with artifact %v", archives, p.Artifact)
	}
}

// countLines counts lines as YAML does: \n, \r\n, a lone \r, and the
// Unicode breaks NEL, LS and PS all end one.
func countLines(data []byte) int {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	return 1 + strings.Count(s, "\n") + strings.Count(s, "\r") + strings.Count(s, "\u0085") + strings.Count(s, "\u2028") + strings.Count(s, "\u2029")
}
