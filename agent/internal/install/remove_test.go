package install

import (
	"context"
	"os"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// removeGo removes the go package, as a removal job does.
func (e *env) removeGo() *ferryv1.JobUpdate {
	e.t.Helper()
	return e.inst.Remove(context.Background(), e.nextJob(), "r1", "go", nil, nil)
}

// TestRemove removes a package installed in two versions, with a file
// step that created a new directory: the tree, the env, sudoers and file
// steps' files go, with the kept previous version and every record; a
// second removal is unchanged.
func TestRemove(t *testing.T) {
	e := newEnv(t)
	must(t, os.MkdirAll(e.path("/etc"), 0o755))
	must(t, os.WriteFile(e.path("/etc/hosts"), []byte("unrelated"), 0o644))
	before := snapshot(t, e.root)
	a1, d1 := artifact(t, goV1)
	a2, d2 := artifact(t, goV2)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	wantPhase(t, e.install(goPackage("1.20.3", d2, fileStep("/etc/go/config", "x=1", 0o644)), a2), succeeded)
	u := e.removeGo()
	wantPhase(t, u, succeeded)
	if u.GetMessage() != "removed go 1.20.3" {
		t.Errorf("message %q", u.GetMessage())
	}
	for _, p := range []string{"/usr/local/go", "/etc/profile.d/go.sh", "/etc/sudoers.d/deploy", "/etc/go/config"} {
		assertAbsent(t, e.path(p))
	}
	if got := readFile(t, e.path("/etc/hosts")); got != "unrelated" {
		t.Errorf("/etc/hosts = %q", got)
	}
	if inst := e.inst.Installed(); len(inst) != 0 {
		t.Errorf("Installed() = %v", inst)
	}
	assertNoLeftovers(t, e)
	// Directories Ferry created stay (profile.d, sudoers.d, /etc/go): they
	// were not recorded by the steps of the removed version alone, so only
	// compare that nothing else is left than empty directories.
	if got := snapshot(t, e.root); strings.Contains(got, "go.sh") || strings.Contains(got, "VERSION") || !strings.Contains(before, "hosts") {
		t.Errorf("left after remove:\n%s", got)
	}
	u = e.removeGo()
	wantPhase(t, u, unchanged)
	if !strings.Contains(u.GetMessage(), "not installed") {
		t.Errorf("second remove: %q", u.GetMessage())
	}
	// The package installs again from scratch.
	wantPhase(t, e.install(goPackage("1.20.3", d2), a2), succeeded)
	verifyTree(t, e.path("/usr/local/go"), stripGo(goV2))
}

// TestRemoveFailureRestores: a file the removal cannot delete fails it,
// and what it had already removed is put back.
func TestRemoveFailureRestores(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	p := pkg("go", "1.20.2", d1,
		archiveStep("/usr/local/go", 1),
		fileStep("/etc/go/config", "x=1", 0o644),
		envStep("go", []string{"/usr/local/go/bin"}, "GOROOT", "/usr/local/go"),
		sudoersStep("deploy", "deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"))
	wantPhase(t, e.install(p, a1), succeeded)
	before := snapshot(t, e.root)
	// Steps are removed newest first: sudoers and env go, then the file
	// step fails on a directory where its file was; the two are put back.
	must(t, os.Remove(e.path("/etc/go/config")))
	must(t, os.MkdirAll(e.path("/etc/go/config/sub"), 0o755))
	u := e.removeGo()
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "not a regular file") {
		t.Errorf("message %q", u.GetMessage())
	}
	must(t, os.RemoveAll(e.path("/etc/go/config")))
	must(t, os.WriteFile(e.path("/etc/go/config"), []byte("x=1"), 0o644))
	if got := snapshot(t, e.root); got != before {
		t.Errorf("failed remove changed the node:\n%s\nvs\n%s", before, got)
	}
	if inst := e.inst.Installed(); len(inst) != 1 {
		t.Errorf("Installed() = %v", inst)
	}
	assertNoLeftovers(t, e)
}

// TestCrashDuringRemove: an agent killed mid-removal puts the package
// back at its next start.
func TestCrashDuringRemove(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	before := snapshot(t, e.root)
	e.crashAt(t, "rollback:switched", "rm", func(i *Installer) { i.Remove(context.Background(), "rm", "r", "go", nil, nil) })
	if after := snapshot(t, e.root); after != before {
		t.Fatalf("node not restored after a crash mid-removal:\n%s\nvs\n%s", before, after)
	}
	wantPhase(t, e.removeGo(), succeeded)
	assertAbsent(t, e.path("/usr/local/go"))
}
