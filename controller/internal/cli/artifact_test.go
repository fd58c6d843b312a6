package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/controller"
)

// startController runs a real controller on loopback and returns the path
// of its admin credential.
func startController(t *testing.T) string {
	t.Helper()
	return startControllerWith(t, nil)
}

// startControllerWith is startController with mod applied to its config.
func startControllerWith(t *testing.T, mod func(*controller.Config)) string {
	t.Helper()
	cfg := controller.Config{
		DataDir:  filepath.Join(t.TempDir(), "controller"),
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		Logger:   slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&cfg)
	}
	ctl, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	return ctl.AdminCredentialPath()
}

// goTarball writes a small go1.20.3.linux-amd64.tar.gz and its .sha256 as
// go.dev/dl publishes it (the bare digest).
func goTarball(t *testing.T, dir string) (tarball, sumFile string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{
		"go/VERSION":   "go1.20.3\n",
		"go/bin/go":    "#!/bin/sh\necho go version go1.20.3 linux/amd64\n",
		"go/README.md": strings.Repeat("The Go Programming Language\n", 20000),
	} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	data = buf.Bytes()
	tarball = filepath.Join(dir, "go1.20.3.linux-amd64.tar.gz")
	sumFile = tarball + ".sha256"
	sum := sha256.Sum256(data)
	if err := os.WriteFile(tarball, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sumFile, []byte(hex.EncodeToString(sum[:])+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tarball, sumFile, data
}

func run(t *testing.T, cfg string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(append([]string{"--config", cfg}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestArtifactCommands(t *testing.T) {
	cfg := startController(t)
	dir := t.TempDir()
	tarball, sumFile, data := goTarball(t, dir)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	code, out, errOut := run(t, cfg, "artifact", "push", tarball, "--checksum-file", sumFile)
	if code != 0 || !strings.Contains(out, "artifact go1.20.3.linux-amd64.tar.gz@1.20.3 pushed: "+digest) || !strings.Contains(out, "(linux/amd64)") || !strings.Contains(out, "checksum matches") {
		t.Fatalf("push: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	code, out, _ = run(t, cfg, "artifact", "push", tarball, "--checksum-file", sumFile)
	if code != 0 || !strings.Contains(out, "unchanged") {
		t.Errorf("second push: exit %d, %s; want unchanged", code, out)
	}

	// A tampered file is refused against the published checksum.
	tampered := filepath.Join(t.TempDir(), filepath.Base(tarball))
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(tampered, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	badSum := sha256.Sum256(bad)
	code, _, errOut = run(t, cfg, "artifact", "push", tampered, "--checksum-file", sumFile)
	if code != 1 || !strings.Contains(errOut, "sha256 mismatch: got sha256:"+hex.EncodeToString(badSum[:])+", want "+digest) || !strings.Contains(errOut, "nothing was uploaded") {
		t.Errorf("tampered push: exit %d, stderr %q; want a refusal with both digests", code, errOut)
	}
	// sha256sum format naming several files, and --sha256.
	multi := filepath.Join(dir, "SHA256SUMS")
	if err := os.WriteFile(multi, []byte(strings.Repeat("0", 64)+"  other.tar.gz\n"+digest[7:]+" *go1.20.3.linux-amd64.tar.gz\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--checksum-file", multi, "--version", "1.20.3-b"},
		{"--sha256", digest[7:], "--version", "1.20.3-c"},
	} {
		code, out, errOut = run(t, cfg, append([]string{"artifact", "push", tarball}, args...)...)
		if code != 0 || !strings.Contains(out, "pushed") {
			t.Errorf("push %v: exit %d, %s %s", args, code, out, errOut)
		}
	}
	code, _, errOut = run(t, cfg, "artifact", "push", tarball, "--sha256", strings.Repeat("ab", 32), "--version", "9")
	if code != 1 || !strings.Contains(errOut, "sha256 mismatch") {
		t.Errorf("push with a wrong --sha256: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, cfg, "artifact", "push", tarball, "--sha256", "abc", "--checksum-file", sumFile)
	if code != 1 || !strings.Contains(errOut, "none of the others can be") && !strings.Contains(errOut, "were all set") {
		t.Errorf("--sha256 with --checksum-file: exit %d, %q; want them refused together", code, errOut)
	}

	// Without a version in the file name, --version is needed.
	plain := filepath.Join(dir, "myapp")
	if err := os.WriteFile(plain, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut = run(t, cfg, "artifact", "push", plain); code != 1 || !strings.Contains(errOut, "--version") {
		t.Errorf("push without a version: exit %d, %q", code, errOut)
	}
	if code, out, errOut = run(t, cfg, "artifact", "push", plain, "--version", "2.4.1", "--os", "linux", "--arch", "arm64"); code != 0 || !strings.Contains(out, "myapp@2.4.1") || !strings.Contains(out, "no checksum given") {
		t.Errorf("push with flags: exit %d, %s %s", code, out, errOut)
	}

	code, out, _ = run(t, cfg, "artifact", "list")
	if code != 0 || strings.Count(out, "\n") != 5 || !strings.Contains(out, "myapp") || !strings.Contains(out, "linux/amd64") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, cfg, "-o", "json", "artifact", "list", "--name", "myapp")
	var listed struct {
		Artifacts []struct{ Name, Version, Arch string }
	}
	if err := json.Unmarshal([]byte(out), &listed); code != 0 || err != nil || len(listed.Artifacts) != 1 || listed.Artifacts[0].Arch != "arm64" {
		t.Errorf("list -o json --name myapp: exit %d, %v\n%s", code, err, out)
	}

	// The three names of the Go tarball share one digest: a prefix is
	// ambiguous and the error lists them.
	code, _, errOut = run(t, cfg, "artifact", "inspect", digest[:20])
	if code != 1 || !strings.Contains(errOut, "matches 3 artifacts") || !strings.Contains(errOut, "go1.20.3.linux-amd64.tar.gz@1.20.3-b") {
		t.Errorf("inspect ambiguous prefix: exit %d, %q", code, errOut)
	}
	code, out, _ = run(t, cfg, "artifact", "inspect", "go1.20.3.linux-amd64.tar.gz@1.20.3")
	if code != 0 || !strings.Contains(out, "Digest:    "+digest) || !strings.Contains(out, "Pushed:") || !strings.Contains(out, "admin/admin") {
		t.Errorf("inspect: exit %d\n%s", code, out)
	}
	code, out, errOut = run(t, cfg, "artifact", "rm", "myapp@2.4.1")
	if code != 0 || !strings.Contains(out, "artifact myapp@2.4.1") || !strings.Contains(out, "removed") {
		t.Errorf("rm: exit %d, %s %s", code, out, errOut)
	}
	if code, _, errOut = run(t, cfg, "artifact", "inspect", "myapp@2.4.1"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("inspect after rm: exit %d, %q", code, errOut)
	}

	// A package that uses the tarball keeps it from being removed.
	pkg := filepath.Join(dir, "go.yaml")
	if err := os.WriteFile(pkg, []byte("name: go\nversion: 1.20.3\nartifact: go1.20.3.linux-amd64.tar.gz@1.20.3\nsteps:\n  - archive: {dest: /usr/local/go, strip_components: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = run(t, cfg, "package", "apply", "-f", pkg); code != 0 {
		t.Fatalf("package apply: exit %d, %s %s", code, out, errOut)
	}
	code, _, errOut = run(t, cfg, "artifact", "rm", "go1.20.3.linux-amd64.tar.gz@1.20.3")
	if code != 1 || !strings.Contains(errOut, "used by package go@1.20.3") {
		t.Errorf("rm of an artifact a package uses: exit %d, %q", code, errOut)
	}
	if code, out, _ = run(t, cfg, "artifact", "inspect", "go1.20.3.linux-amd64.tar.gz@1.20.3"); !strings.Contains(out, "Used by:   go@1.20.3") {
		t.Errorf("inspect does not show the package: exit %d\n%s", code, out)
	}
}

// A byte flipped in a stored blob: verify says damaged with both digests
// and exits 1, list and inspect show it, a re-push restores it.
func TestArtifactVerify(t *testing.T) {
	cfg := startController(t)
	dir := t.TempDir()
	tarball, sumFile, data := goTarball(t, dir)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if code, out, errOut := run(t, cfg, "artifact", "push", tarball, "--checksum-file", sumFile); code != 0 {
		t.Fatalf("push: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run(t, cfg, "artifact", "verify", "--all"); code != 0 || out != "artifact go1.20.3.linux-amd64.tar.gz@1.20.3: ok, "+digest+"\nverified 1 artifact(s): 1 ok, 0 damaged, 0 not checked\n" {
		t.Errorf("verify of an intact store: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	// The admin credential lies in the controller's data dir.
	blob := filepath.Join(filepath.Dir(cfg), "artifacts", "sha256", digest[len("sha256:"):])
	bad := bytes.Clone(data)
	bad[100] ^= 0x80
	if err := os.WriteFile(blob, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	badSum := sha256.Sum256(bad)
	got := "sha256:" + hex.EncodeToString(badSum[:])
	code, out, errOut := run(t, cfg, "artifact", "verify", "go1.20.3.linux-amd64.tar.gz@1.20.3")
	if code != 1 || !strings.Contains(out, "artifact go1.20.3.linux-amd64.tar.gz@1.20.3: damaged: got "+got+", want "+digest+"; quarantined until pushed again\n") ||
		!strings.Contains(out, "1 damaged") ||
		errOut != "Error: 1 artifact(s) damaged on the controller (go1.20.3.linux-amd64.tar.gz@1.20.3): agents are refused them until you push each again from its original file with `ferryctl artifact push FILE --name NAME --version VERSION`\n" {
		t.Errorf("verify of a flipped byte: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if code, out, _ = run(t, cfg, "artifact", "list"); code != 0 || !strings.Contains(out, " STATE ") || !strings.Contains(out, " damaged ") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	if code, out, _ = run(t, cfg, "artifact", "inspect", "go1.20.3.linux-amd64.tar.gz@1.20.3"); code != 0 || !strings.Contains(out, "State:     damaged (found ") || !strings.Contains(out, "its stored bytes hash to "+got) {
		t.Errorf("inspect: exit %d\n%s", code, out)
	}
	if code, out, errOut = run(t, cfg, "-o", "json", "artifact", "verify", "--all"); code != 1 || !strings.Contains(out, `"state": "damaged"`) || !strings.Contains(out, `"`+got+`"`) {
		t.Errorf("verify -o json: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	code, out, errOut = run(t, cfg, "artifact", "push", tarball, "--checksum-file", sumFile)
	if code != 0 || out != "artifact go1.20.3.linux-amd64.tar.gz@1.20.3 restored: these bytes ("+digest+") replaced the damaged copy on the controller, which serves it again\n" {
		t.Errorf("re-push: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if code, out, _ = run(t, cfg, "artifact", "list"); code != 0 || strings.Contains(out, "damaged") || !strings.Contains(out, " ok ") {
		t.Errorf("list after the re-push: exit %d\n%s", code, out)
	}
	if code, _, errOut = run(t, cfg, "artifact", "verify"); code != 1 || errOut != "Error: name the artifact to verify (REF), or verify all of them with --all\n" {
		t.Errorf("verify without REF: exit %d, %q", code, errOut)
	}
}
