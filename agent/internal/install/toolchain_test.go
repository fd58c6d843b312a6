package install

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestInstallGoToolchain installs a Go toolchain tarball built from the
// local toolchain (its go binary and VERSION file, laid out as the release
// tarball is) and runs ROOT/usr/local/go/bin/go version, through a check
// and directly.
func TestInstallGoToolchain(t *testing.T) {
	// `go test` puts the go command that runs it first on PATH.
	goenv, err := exec.Command("go", "env", "GOROOT", "GOVERSION").Output()
	if err != nil {
		t.Skipf("no local Go toolchain: go env: %v", err)
	}
	goroot, goversion, _ := strings.Cut(strings.TrimSpace(string(goenv)), "\n")
	if goversion != runtime.Version() {
		t.Skipf("the go command on PATH is %s, not the %s that built this test", goversion, runtime.Version())
	}
	if _, err := os.Stat(filepath.Join(goroot, "bin", "go")); err != nil {
		t.Skipf("no local Go toolchain at %s", goroot)
	}
	art := filepath.Join(t.TempDir(), "go.linux.tar.gz")
	digest := writeToolchainTarball(t, art, goroot)
	e := newEnv(t)
	version := runtime.Version()
	p := pkg("go", strings.TrimPrefix(version, "go"), digest,
		archiveStep("/usr/local/go", 1),
		envStep("go", []string{"/usr/local/go/bin"}, "GOROOT", "/usr/local/go"),
		checkStep("go version", version, 0),
	)
	u := e.install(p, art)
	wantPhase(t, u, succeeded)
	if out := u.GetSteps()[2].GetOutput(); !strings.Contains(out, version) {
		t.Errorf("check output %q", out)
	}
	cmd := exec.Command(e.path("/usr/local/go/bin/go"), "version")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), version) {
		t.Fatalf("ROOT/usr/local/go/bin/go version: %v: %s", err, out)
	}
	wantPhase(t, e.install(p, art), unchanged)
}

func writeToolchainTarball(t *testing.T, dst, goroot string) string {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	zw, _ := gzip.NewWriterLevel(io.MultiWriter(f, h), gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	// pkg/tool is how a go binary recognises the GOROOT it sits in.
	for _, d := range []string{"go/", "go/bin/", "go/pkg/", "go/pkg/tool/"} {
		must(t, tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}))
	}
	for _, name := range []string{"VERSION", "bin/go"} {
		src, err := os.Open(filepath.Join(goroot, name))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := src.Stat()
		hdr, _ := tar.FileInfoHeader(st, "")
		hdr.Name = "go/" + name
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(tw, src)
		src.Close()
		must(t, err)
	}
	must(t, errors.Join(tw.Close(), zw.Close()))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
