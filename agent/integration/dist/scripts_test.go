package dist

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestScriptsShellcheck runs shellcheck over the release scripts, where it
// is installed (.ci/run installs it).
func TestScriptsShellcheck(t *testing.T) {
	t.Parallel()
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck not found (Debian: apt-get install shellcheck); the release scripts were not checked")
	}
	scripts := []string{"deployments/dist/dist.sh", "deployments/dist/dist-check.sh", "deployments/dist/install.sh", "deployments/container/build.sh"}
	for i, s := range scripts {
		scripts[i] = filepath.Join(repo, s)
	}
	if res := run(t, sc, scripts...); res.exit != 0 {
		t.Errorf("shellcheck: %s", res)
	}
}

// TestImageWithoutBuilder: make image on a machine without podman, buildah
// or docker fails and says what to install.
func TestImageWithoutBuilder(t *testing.T) {
	t.Parallel()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	// An empty PATH: none of the three can be found.
	res := run(t, "env", "PATH="+t.TempDir(), bash, filepath.Join(repo, "deployments/container/build.sh"), "ferry-controller:test", "0.0.0-test", "abc")
	if res.exit == 0 || !strings.Contains(res.stderr, "none of podman, buildah or docker can build here") || !strings.Contains(res.stderr, "apt-get install podman") {
		t.Errorf("build.sh without any builder: %s; want a failure naming what to install", res)
	}
}

// TestDistRefusesBadInput: make dist without a release version or with a
// key that is not ed25519 stops before building.
func TestDistRefusesBadInput(t *testing.T) {
	t.Parallel()
	dist := filepath.Join(repo, "deployments/dist/dist.sh")
	out := t.TempDir()
	if res := run(t, dist, "8e09cdd-dirty", out); res.exit == 0 || !strings.Contains(res.stderr, "is not a release version like 1.4.0") {
		t.Errorf("dist.sh with a git describe version: %s", res)
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		return
	}
	key := filepath.Join(t.TempDir(), "rsa")
	if res := run(t, "ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", key); res.exit != 0 {
		t.Fatal(res)
	}
	res := run(t, "env", "SIGNING_KEY="+key, dist, "1.0.0", out)
	if res.exit == 0 || !strings.Contains(res.stderr, "is not an ed25519 key") {
		t.Errorf("dist.sh with an RSA key: %s", res)
	}
}
