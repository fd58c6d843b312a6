package e2e_test

import (
	"archive/tar"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// bigTarball writes a tar.gz holding one incompressible file of size bytes
// and a tool script, and its .sha256 in the sha256sum format.
func bigTarball(t *testing.T, dir, version string, size int64) (path, digest string) {
	t.Helper()
	path = filepath.Join(dir, "blob-"+version+".tar.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	gz, _ := gzip.NewWriterLevel(io.MultiWriter(f, h), gzip.NoCompression)
	tw := tar.NewWriter(gz)
	script := "#!/bin/sh\necho blob " + version + "\n"
	if err := tw.WriteHeader(&tar.Header{Name: "blob/bin/blob", Mode: 0o755, Size: int64(len(script)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(script)); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "blob/data", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	gz.Close()
	f.Close()
	digest = hex.EncodeToString(h.Sum(nil))
	if err := os.WriteFile(path+".sha256", []byte(digest+"  "+filepath.Base(path)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, digest
}

var bytesServedRE = regexp.MustCompile(`(?m)^ferry_artifact_bytes_served_total (\S+)$`)

func bytesServed(t *testing.T, c *e2e.Controller) int64 {
	t.Helper()
	code, body := c.HTTPGet("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: HTTP %d", code)
	}
	m := bytesServedRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no ferry_artifact_bytes_served_total")
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(v)
}

// TestE2EAgentKilledMidDownloadResumes: an agent killed with SIGKILL in the
// middle of a download resumes it after a restart from the bytes it has on
// disk (the controller serves only the rest), verifies the whole file and
// completes the install; the rollout succeeds.
func TestE2EAgentKilledMidDownloadResumes(t *testing.T) {
	t.Parallel()
	killMidDownload(t, nil, 8<<20)
}

// TestE2EAgentKilledMidDownloadResumesWithPeerExchange: the same with peer
// exchange on (the only agent seeds every piece from the controller):
// the restarted agent keeps the pieces on disk that match their digests.
// What is lost at the kill is at most the pieces being fetched (two
// streams of a 4 MiB piece) and what was in flight.
func TestE2EAgentKilledMidDownloadResumesWithPeerExchange(t *testing.T) {
	t.Parallel()
	killMidDownload(t, []string{"--peer-listen", "127.0.0.1:0"}, 16<<20)
}

// killMidDownload kills an agent run with args in the middle of a
// download and checks that its restart fetches at most slack bytes again.
func killMidDownload(t *testing.T, args []string, slack int64) {
	h := e2e.New(t)
	c := h.StartController(e2e.ControllerOptions{})
	a := h.NewAgent("dl-1", e2e.AgentOptions{Args: args})
	a.MustEnroll(h.Token("staging", 1))
	a.Start()
	h.WaitNodeState("dl-1", e2e.Healthy, 20*time.Second)

	const size = 192 << 20
	tarball, _ := bigTarball(t, h.Dir(), "1.0.0", size)
	h.MustCtl("artifact", "push", tarball, "--checksum-file", tarball+".sha256")
	pkg := filepath.Join(h.Dir(), "blob.yaml")
	err := os.WriteFile(pkg, []byte(fmt.Sprintf(`name: blob
version: 1.0.0
artifact: %s
steps:
  - archive: {dest: /opt/blob, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/blob/bin/blob", expect: "blob 1.0.0"}
`, filepath.Base(tarball))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	h.MustCtl("package", "apply", "-f", pkg)
	// The agent downloads the zstd form the controller transcoded (about
	// as large: the data is incompressible), by its own digest.
	formDigest, artifactSize := zstdForm(t, h, filepath.Base(tarball)+"@1.0.0")

	before := bytesServed(t, c)
	id := strings.TrimSpace(h.MustCtl("rollout", "--group", "staging", "--package", "blob@1.0.0", "--canary", "0", "--healthy-for", "1s", "--detach"))

	// Freeze the controller as soon as the agent has part of the file, so
	// the kill lands mid-download whatever the speed of this machine.
	partial := filepath.Join(a.StateDir, "downloads", formDigest+".partial")
	deadline := time.Now().Add(30 * time.Second)
	for fileSizeOr0(partial) < 48<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent never started downloading (no %s)", partial)
		}
		time.Sleep(2 * time.Millisecond)
	}
	c.Pause()
	time.Sleep(200 * time.Millisecond) // let in-flight bytes land
	a.Kill()
	had := fileSizeOr0(partial)
	c.Resume()
	if had < 32<<20 || had >= artifactSize {
		t.Fatalf("staging file has %d of %d bytes at the kill; want a partial download of at least 32 MiB", had, artifactSize)
	}
	t.Logf("killed the agent with %d of %d bytes on disk", had, artifactSize)

	a.Start()
	var out string
	h.WaitFor("the rollout to end", 60*time.Second, func() (bool, string) {
		out, _, _ = h.Ctl("rollout", "status", id)
		return strings.Contains(out, "State:    succeeded") || strings.Contains(out, "State:    failed"), out
	})
	if !strings.Contains(out, "State:    succeeded") {
		t.Fatalf("rollout did not succeed after the agent restart:\n%s\nagent log:\n%s", out, a.Tail(30))
	}
	served := bytesServed(t, c) - before
	// The second download fetched only what was missing: everything served
	// is the file once, plus at most what was in flight at the kill (a
	// refetch from zero would add all of `had`, at least 32 MiB).
	if served > artifactSize+slack {
		t.Errorf("controller served %d bytes for a %d-byte artifact: the agent fetched again what it had on disk (%d bytes)", served, artifactSize, had)
	}
	t.Logf("controller served %d bytes in all for a %d-byte artifact (%d resumed from disk)", served, artifactSize, had)
	got, err := os.ReadFile(filepath.Join(a.Root, "opt/blob/bin/blob"))
	if err != nil || !strings.Contains(string(got), "blob 1.0.0") {
		t.Errorf("installed tool: %q, %v", got, err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("staging file still there after a verified download: %v", err)
	}
	if pieces := strings.Contains(a.FullLog(), "resuming download: kept the verified pieces"); pieces != (args != nil) {
		t.Errorf("the restarted agent resumed in pieces: %v, want %v (peer exchange with %v)", pieces, args != nil, args)
	}
}

var zstdFormRE = regexp.MustCompile(`(?m)^Zstd form: .* \((\d+) bytes\), sha256:([0-9a-f]{64});`)

// zstdForm returns the digest (hex) and size of an artifact's zstd form,
// as `ferryctl artifact inspect` shows them.
func zstdForm(t *testing.T, h *e2e.Harness, ref string) (string, int64) {
	t.Helper()
	out := h.MustCtl("artifact", "inspect", ref)
	m := zstdFormRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("artifact %s has no zstd form:\n%s", ref, out)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return m[2], n
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func fileSizeOr0(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}
