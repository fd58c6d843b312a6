package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// PackGoToolchain packs the local Go toolchain (go env GOROOT) as the
// official go1.X.Y.linux-amd64.tar.gz lays it out, a top-level go/, into
// dir, and writes the .sha256 file release pages publish beside it. It
// returns the tarball's path and the toolchain's version without "go"
// (e.g. "1.26.8"). It skips t when GOROOT is not a folder named go.
func PackGoToolchain(t testing.TB, dir string) (tarball, version string) {
	t.Helper()
	out, err := exec.Command("go", "env", "GOROOT", "GOVERSION").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("go env GOROOT GOVERSION printed %q", out)
	}
	goroot, version := f[0], strings.TrimPrefix(f[1], "go")
	if filepath.Base(goroot) != "go" {
		t.Skipf("GOROOT %s is not a folder named go, as the release tarball's top level is", goroot)
	}
	tarball = filepath.Join(dir, "go"+version+".linux-amd64.tar.gz")
	// No time limit: packing takes tens of seconds on a loaded machine.
	if out, err := exec.Command("sh", "-c", `tar -C "$1" -cf - go | gzip -1 >"$2"`, "sh", filepath.Dir(goroot), tarball).CombinedOutput(); err != nil {
		t.Fatalf("pack %s: %v: %s", goroot, err, out)
	}
	sum, err := fileSHA256(tarball)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tarball+".sha256", []byte(sum+"  "+filepath.Base(tarball)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tarball, version
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
