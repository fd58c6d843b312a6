package install

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestCheckDrift(t *testing.T) {
	e := newEnv(t)
	a, d := artifact(t, map[string]string{"tool/": "", "tool/bin/": "", "tool/bin/tool": "#!/bin/sh\necho 1\n", "tool/VERSION": "1\n"})
	wantPhase(t, e.install(pkg("tool", "1", d, archiveStep("/opt/tool", 1)), a), succeeded)

	must(t, e.inst.RecordHashes())
	rep, err := e.inst.CheckDrift(false)
	must(t, err)
	if rep.GetChecked() != 1 || len(rep.GetPackages()) != 0 || rep.GetFull() {
		t.Fatalf("fresh install: %v, want 1 package checked and no drift", rep)
	}

	// Same size, same time, other content: only a full check sees it.
	p := e.path("/opt/tool/VERSION")
	st, err := os.Stat(p)
	must(t, err)
	must(t, os.WriteFile(p, []byte("2\n"), 0o644))
	must(t, os.Chtimes(p, st.ModTime(), st.ModTime()))
	rep, err = e.inst.CheckDrift(false)
	must(t, err)
	if len(rep.GetPackages()) != 0 {
		t.Fatalf("a cheap check hashed the files: %v", rep)
	}
	ro, err := ReadOnly(e.root, e.state)
	must(t, err)
	rep, err = ro.CheckDrift(true)
	must(t, err)
	if len(rep.GetPackages()) != 1 || rep.GetPackages()[0].GetChanged() != 1 || rep.GetPackages()[0].GetExamples()[0] != "/opt/tool/VERSION: content changed (same size and time)" {
		t.Fatalf("full check: %v", rep)
	}

	// A file added, one removed: the cheap check counts both.
	must(t, os.WriteFile(e.path("/opt/tool/extra"), []byte("x"), 0o644))
	must(t, os.Remove(e.path("/opt/tool/bin/tool")))
	rep, err = e.inst.CheckDrift(false)
	must(t, err)
	pd := rep.GetPackages()
	if len(pd) != 1 || pd[0].GetName() != "tool" || pd[0].GetVersion() != "1" || pd[0].GetChanged() != 2 {
		t.Fatalf("drift %v, want tool 1 with 2 entries changed", rep)
	}
	if got := strings.Join(pd[0].GetExamples(), "; "); !strings.Contains(got, "/opt/tool/extra: not part of the installed tree") || !strings.Contains(got, "/opt/tool/bin/tool: missing") {
		t.Errorf("examples %q", got)
	}
	if rep.GetCheckedAt().AsTime().Before(time.Now().Add(-time.Minute)) {
		t.Errorf("checked at %v", rep.GetCheckedAt().AsTime())
	}

	// The whole tree gone.
	must(t, os.RemoveAll(e.path("/opt/tool")))
	rep, err = e.inst.CheckDrift(false)
	must(t, err)
	if pd := rep.GetPackages(); len(pd) != 1 || pd[0].GetExamples()[0] != "/opt/tool: missing" {
		t.Fatalf("removed tree: %v", rep)
	}
}

// An archive's files are hashed as they are extracted: a full check sees
// a change of content alone without RecordHashes having run.
func TestInstallRecordsHashes(t *testing.T) {
	e := newEnv(t)
	a, d := artifact(t, map[string]string{"tool/": "", "tool/bin/": "", "tool/bin/tool": "#!/bin/sh\necho 1\n", "tool/VERSION": "1\n"})
	wantPhase(t, e.install(pkg("tool", "1", d, archiveStep("/opt/tool", 1)), a), succeeded)

	p := e.path("/opt/tool/VERSION")
	st, err := os.Stat(p)
	must(t, err)
	must(t, os.WriteFile(p, []byte("2\n"), 0o644))
	must(t, os.Chtimes(p, st.ModTime(), st.ModTime()))
	ro, err := ReadOnly(e.root, e.state)
	must(t, err)
	rep, err := ro.CheckDrift(true)
	must(t, err)
	if len(rep.GetPackages()) != 1 || rep.GetPackages()[0].GetChanged() != 1 || rep.GetPackages()[0].GetExamples()[0] != "/opt/tool/VERSION: content changed (same size and time)" {
		t.Fatalf("full check without RecordHashes: %v", rep)
	}
}
