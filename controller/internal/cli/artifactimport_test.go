package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/controller/controller"
)

// ferryctl artifact import through a real controller: from an HTTPS
// repository with an internal CA, from a share under --import-dir; a wrong
// checksum and a path outside the share are refused, record nothing but
// their audit entries.
func TestArtifactImport(t *testing.T) {
	share := t.TempDir()
	cfg := startControllerWith(t, func(c *controller.Config) { c.ImportDirs = []string{share} })
	tarball, sumFile, data := goTarball(t, share)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	repo := httptest.NewTLSServer(http.FileServer(http.Dir(share)))
	t.Cleanup(repo.Close)
	ca := filepath.Join(t.TempDir(), "dc1-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: repo.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	url := repo.URL + "/" + filepath.Base(tarball)

	code, _, errOut := run(t, cfg, "artifact", "import", url, "--checksum-url", url+".sha256")
	if code != 1 || !strings.Contains(errOut, "TLS verification failed") || !strings.Contains(errOut, "--ca-bundle FILE") || strings.Contains(errOut, "rpc error") {
		t.Errorf("import without the CA: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, cfg, "artifact", "import", url, "--checksum", "sha256:"+strings.Repeat("0", 64), "--ca-bundle", ca)
	if code != 1 || !strings.Contains(errOut, "sha256 mismatch: artifact go1.20.3.linux-amd64.tar.gz@1.20.3: got "+digest) {
		t.Errorf("import with a wrong checksum: exit %d, %q", code, errOut)
	}
	code, out, errOut := run(t, cfg, "artifact", "import", url, "--checksum-url", url+".sha256", "--ca-bundle", ca)
	if code != 0 || !regexp.MustCompile(`^artifact go1\.20\.3\.linux-amd64\.tar\.gz@1\.20\.3 imported: `+digest+`, \S+ \S+ \(linux/amd64\), checksum matches, [0-9.]+s\n$`).MatchString(out) {
		t.Errorf("import: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	// From the share, under another version: the same blob, a new record.
	code, out, errOut = run(t, cfg, "artifact", "import", tarball, "--checksum-url", sumFile, "--version", "1.20.3-share")
	if code != 0 || !strings.Contains(out, "artifact go1.20.3.linux-amd64.tar.gz@1.20.3-share imported: "+digest) {
		t.Errorf("path import: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	outside := filepath.Join(filepath.Dir(cfg), "ferry.db")
	code, _, errOut = run(t, cfg, "artifact", "import", outside, "--checksum", digest, "--version", "1")
	if code != 1 || !strings.Contains(errOut, "is not under an import directory of this controller ("+share+")") {
		t.Errorf("import of a controller file: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, cfg, "artifact", "import", url)
	if code != 1 || !strings.Contains(errOut, "--checksum sha256:HEX, or --checksum-url URL") {
		t.Errorf("import without a checksum: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, cfg, "artifact", "push", url)
	if code != 1 || !strings.Contains(errOut, "ferryctl artifact import "+url) {
		t.Errorf("push of a URL: exit %d, %q", code, errOut)
	}

	code, out, _ = run(t, cfg, "artifact", "list")
	if code != 0 || strings.Count(out, "\n") != 3 {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, errOut = run(t, cfg, "audit", "--limit", "5")
	if code != 0 {
		t.Fatalf("audit: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		`artifact\.import\s+go1\.20\.3\.linux-amd64\.tar\.gz@1\.20\.3\s+ok\s+source=` + regexp.QuoteMeta(url) + ` digest=` + digest,
		`artifact\.import\s+go1\.20\.3\.linux-amd64\.tar\.gz@1\.20\.3-share\s+ok\s+source=` + regexp.QuoteMeta(tarball),
		`artifact\.import\s+` + regexp.QuoteMeta(outside) + `\s+import refused`,
		`artifact\.import\s+` + regexp.QuoteMeta(url) + `\s+sha256 mismatch`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("ferryctl audit does not match %q:\n%s", want, out)
		}
	}
}
