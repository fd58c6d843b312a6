package e2e_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// TestE2EImportAndGroupMirror with the built binaries: the controller
// imports one artifact from an HTTP repository and one from a share under
// --import-dir; the repository is also the site mirror of the agent's
// group, so the first artifact comes from it (the controller serves a
// fraction of it) and the second, which the mirror lacks, from the
// controller after the mirror's 404, noted in the job's log.
func TestE2EImportAndGroupMirror(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	repo, share := filepath.Join(h.Dir(), "repo"), filepath.Join(h.Dir(), "share")
	for _, d := range []string{repo, share} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const size = 16 << 20
	v1, _ := bigTarball(t, repo, "1.0.0", size)
	v2, _ := bigTarball(t, share, "2.0.0", size)
	srv := httptest.NewServer(http.FileServer(http.Dir(repo)))
	t.Cleanup(srv.Close)
	c := h.StartController(e2e.ControllerOptions{Args: []string{"--import-dir", share}})
	h.Agent("site-1", "sh1")
	h.WaitNodeState("site-1", e2e.Healthy, 20*time.Second)

	url := srv.URL + "/" + filepath.Base(v1)
	if out := h.MustCtl("artifact", "import", url, "--checksum-url", url+".sha256"); !strings.Contains(out, "artifact blob-1.0.0.tar.gz@1.0.0 imported: sha256:") {
		t.Fatalf("import over HTTP: %s", out)
	}
	if out := h.MustCtl("artifact", "import", v2, "--checksum-url", v2+".sha256"); !strings.Contains(out, "artifact blob-2.0.0.tar.gz@2.0.0 imported: sha256:") {
		t.Fatalf("import from the share: %s", out)
	}
	if _, errOut, code := h.Ctl("artifact", "import", filepath.Join(c.DataDir, "ferry.db"), "--checksum", "sha256:"+strings.Repeat("0", 64), "--version", "1"); code != 1 || !strings.Contains(errOut, "is not under an import directory") {
		t.Errorf("import of the controller's store: exit %d, %s", code, errOut)
	}
	h.MustCtl("mirror", "set", "--group", "sh1", srv.URL)

	for _, v := range []string{"1.0.0", "2.0.0"} {
		pkg := filepath.Join(h.Dir(), "blob-"+v+".yaml")
		if err := os.WriteFile(pkg, []byte(fmt.Sprintf(`name: blob
version: %s
artifact: blob-%s.tar.gz
steps:
  - archive: {dest: /opt/blob, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/blob/bin/blob", expect: "blob %s"}
`, v, v, v)), 0o644); err != nil {
			t.Fatal(err)
		}
		h.MustCtl("package", "apply", "-f", pkg)
		before := bytesServed(t, c)
		id := strings.TrimSpace(h.MustCtl("rollout", "--group", "sh1", "--package", "blob@"+v, "--canary", "0", "--healthy-for", "1s", "--detach"))
		var out string
		h.WaitFor("rollout "+v+" to end", 60*time.Second, func() (bool, string) {
			out, _, _ = h.Ctl("rollout", "status", id)
			return strings.Contains(out, "State:    succeeded") || strings.Contains(out, "State:    failed"), out
		})
		if !strings.Contains(out, "State:    succeeded") {
			t.Fatalf("rollout of %s:\n%s", v, out)
		}
		served := bytesServed(t, c) - before
		logs := h.MustCtl("logs", id, "site-1")
		if v == "1.0.0" {
			if served > size/4 || !strings.Contains(logs, "from the mirror "+srv.URL+"/blob-1.0.0.tar.gz") {
				t.Errorf("1.0.0: the controller served %d bytes; want the mirror to serve it\n%s", served, logs)
			}
		} else if served < size || !strings.Contains(logs, "HTTP 404 Not Found; fetching from the controller") {
			t.Errorf("2.0.0: the controller served %d bytes; want all of it after the mirror's 404\n%s", served, logs)
		}
		t.Logf("blob %s: the controller served %d bytes", v, served)
	}
}
