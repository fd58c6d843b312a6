package dist

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// imageTestEnv turns TestContainerImage on: building the bundle and the
// image takes longer than `make test` should, so `make image-test` runs it.
const imageTestEnv = "FERRY_IMAGE_TEST"

// TestContainerImage builds the controller's image from the amd64 bundle
// with `make image`'s script, offline (FROM scratch, no RUN), and checks
// what an operator would: the image runs as 65532 with the data dir as a
// volume and the config file as its command; its files are the bundle's
// binaries, the CA certificates, passwd and group naming the user, and a
// data dir that user owns, mode 0700. Where a container can run here, it
// runs `ferry-controller --version` in it and starts the controller on
// loopback with a temporary data dir, which must answer /healthz and
// write its CA into that dir.
func TestContainerImage(t *testing.T) {
	if os.Getenv(imageTestEnv) == "" {
		t.Skip("the container image test runs with `make image-test` (" + imageTestEnv + "=1): building the bundle and the image takes over 30 s")
	}
	builder := ""
	for _, b := range []string{"podman", "buildah"} {
		if _, err := exec.LookPath(b); err == nil {
			builder = b
			break
		}
	}
	if builder == "" {
		t.Skip("neither podman nor buildah is installed (Debian: apt-get install podman); the controller's image was not built")
	}
	r := bundle(t)
	image := fmt.Sprintf("localhost/ferry-controller-test:%d", os.Getpid())
	start := time.Now()
	res := runFor(t, 5*time.Minute, "env", "BUILDER="+builder, "BUNDLE="+r.tarball(), "ARCH=amd64",
		filepath.Join(repo, "deployments/container/build.sh"), image, version, "test")
	if res.exit != 0 {
		t.Fatalf("build.sh with %s: %s", builder, res)
	}
	t.Cleanup(func() { _ = exec.Command(builder, "rmi", "-f", image).Run() })
	t.Logf("built %s with %s in %s", image, builder, time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(res.stdout, "from ferry-"+version+"-linux-amd64.tar.gz with "+builder) {
		t.Errorf("build.sh did not say what it built from:\n%s", res)
	}

	// The image's configuration.
	res = run(t, builder, "inspect", "--type", "image", "--format", "{{json .OCIv1.Config}}", image)
	if builder == "podman" {
		res = run(t, builder, "image", "inspect", "--format", "{{json .Config}}", image)
	}
	var cfg struct {
		User       string
		Entrypoint []string
		Cmd        []string
		Volumes    map[string]struct{}
		Labels     map[string]string
	}
	if err := json.Unmarshal([]byte(res.stdout), &cfg); err != nil || res.exit != 0 {
		t.Fatalf("inspect %s: %v\n%s", image, err, res)
	}
	if cfg.User != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532 (non-root)", cfg.User)
	}
	if _, ok := cfg.Volumes["/var/lib/ferry-controller"]; !ok || len(cfg.Volumes) != 1 {
		t.Errorf("image volumes %v, want the data dir /var/lib/ferry-controller", cfg.Volumes)
	}
	if strings.Join(cfg.Entrypoint, " ") != "/usr/local/bin/ferry-controller" || strings.Join(cfg.Cmd, " ") != "--config /etc/ferry/controller.yaml" {
		t.Errorf("image entrypoint %q, cmd %q; want ferry-controller --config /etc/ferry/controller.yaml", cfg.Entrypoint, cfg.Cmd)
	}
	if cfg.Labels["org.opencontainers.image.version"] != version {
		t.Errorf("image version label %q, want the bundle's %s", cfg.Labels["org.opencontainers.image.version"], version)
	}

	// The image's files, from a container made (not run) of it.
	files := imageFiles(t, builder, image)
	for _, want := range []struct {
		path       string
		mode       os.FileMode
		uid, gid   int
		sameAsFile string // the bundle's file it must be
	}{
		{"usr/local/bin/ferry-controller", 0o755, 0, 0, "bin/ferry-controller"},
		{"usr/local/bin/ferryctl", 0o755, 0, 0, "bin/ferryctl"},
		{"etc/ssl/certs/ca-certificates.crt", 0o644, 0, 0, ""},
		{"etc/passwd", 0o644, 0, 0, ""},
		{"etc/group", 0o644, 0, 0, ""},
		{"etc/ferry/controller.yaml", 0o644, 0, 0, ""},
		{"var/lib/ferry-controller", os.ModeDir | 0o700, 65532, 65532, ""},
		{"tmp", os.ModeDir | os.ModeSticky | 0o777, 0, 0, ""},
	} {
		f, ok := files[want.path]
		if !ok {
			t.Errorf("the image has no /%s", want.path)
			continue
		}
		if f.mode != want.mode || f.uid != want.uid || f.gid != want.gid {
			t.Errorf("/%s: %v %d:%d, want %v %d:%d", want.path, f.mode, f.uid, f.gid, want.mode, want.uid, want.gid)
		}
		if want.sameAsFile != "" {
			if b := filepath.Join(extract(t, r), want.sameAsFile); sha256File(t, b) != f.sha256 {
				t.Errorf("/%s is not the bundle's %s", want.path, want.sameAsFile)
			}
		}
	}
	if p := string(files["etc/passwd"].data); !strings.Contains(p, "ferry:x:65532:65532:") {
		t.Errorf("/etc/passwd names no user 65532:\n%s", p)
	}
	if ca := files["etc/ssl/certs/ca-certificates.crt"]; !bytes.Contains(ca.data, []byte("BEGIN CERTIFICATE")) {
		t.Error("/etc/ssl/certs/ca-certificates.crt holds no certificate")
	}
	for p := range files {
		if strings.HasPrefix(p, "bin/") || p == "bin" || strings.HasSuffix(p, "/sh") {
			t.Errorf("the image holds %s: it should carry no shell or system binaries", p)
		}
	}

	t.Run("run", func(t *testing.T) { runImage(t, builder, image) })
}

type imageFile struct {
	mode     os.FileMode
	uid, gid int
	sha256   string
	data     []byte // small files only
}

// imageFiles lists the image's files from a container created (never
// started) from it: podman create + export, or buildah from + mount.
func imageFiles(t *testing.T, builder, image string) map[string]imageFile {
	t.Helper()
	var out io.Reader
	switch builder {
	case "podman":
		res := run(t, "podman", "create", image)
		if res.exit != 0 {
			t.Fatalf("podman create %s: %s", image, res)
		}
		id := strings.TrimSpace(res.stdout)
		t.Cleanup(func() { _ = exec.Command("podman", "rm", "-f", "-v", id).Run() })
		b, err := exec.Command("podman", "export", id).Output()
		if err != nil {
			t.Fatalf("podman export: %v", err)
		}
		out = bytes.NewReader(b)
	default:
		res := run(t, "buildah", "from", image)
		if res.exit != 0 {
			t.Fatalf("buildah from %s: %s", image, res)
		}
		id := strings.TrimSpace(res.stdout)
		t.Cleanup(func() { _ = exec.Command("buildah", "rm", id).Run() })
		mnt := run(t, "buildah", "mount", id)
		if mnt.exit != 0 {
			t.Fatalf("buildah mount: %s", mnt)
		}
		b, err := exec.Command("tar", "-C", strings.TrimSpace(mnt.stdout), "--numeric-owner", "-cf", "-", ".").Output()
		if err != nil {
			t.Fatalf("tar of the mounted image: %v", err)
		}
		out = bytes.NewReader(b)
	}
	files := map[string]imageFile{}
	tr := tar.NewReader(out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read the image's files: %v", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if name == "" || name == "." {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		f := imageFile{mode: h.FileInfo().Mode(), uid: h.Uid, gid: h.Gid, sha256: sha256Bytes(data)}
		if len(data) < 1<<20 {
			f.data = data
		}
		files[name] = f
	}
	return files
}

// runImage runs the image, where containers can run here. As root on a
// host whose cgroup v2 hierarchy (mounted beside v1) has controllers,
// crun refuses every container ("cgroups in hybrid mode not supported");
// the test then runs podman in a mount namespace of its own without that
// mount, with cgroups off and rlimits within this process's (without
// CAP_SYS_RESOURCE crun cannot raise them). Neither changes the host.
func runImage(t *testing.T, builder, image string) {
	if builder != "podman" {
		t.Skip("running the image is checked with podman only")
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the image is linux/amd64 and this host is not")
	}
	// plain: podman as it is; private: the workaround above.
	podman := func(private bool, args ...string) result {
		t.Helper()
		if !private {
			return runFor(t, 2*time.Minute, "podman", args...)
		}
		return runFor(t, 2*time.Minute, "unshare", append([]string{"-m", "sh", "-c",
			`umount /sys/fs/cgroup/unified 2>/dev/null; exec podman "$@"`, "sh"}, args...)...)
	}
	var limits []string
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		limits = append(limits, "--ulimit", fmt.Sprintf("nofile=%d:%d", rl.Cur, rl.Cur))
	}
	limits = append(limits, "--ulimit", "nproc=4096:4096")
	private := false
	opts := []string{"--network", "host"}
	res := podman(false, append([]string{"run", "--rm"}, append(opts, image, "--version")...)...)
	if res.exit != 0 {
		t.Logf("podman run as is fails here: %s", strings.TrimSpace(res.stderr))
		private = true
		opts = append(append(opts, "--cgroups=disabled"), limits...)
		res = podman(true, append([]string{"run", "--rm"}, append(opts, image, "--version")...)...)
		if res.exit != 0 {
			t.Skipf("containers cannot run here, even in a mount namespace without the cgroup v2 mount and with cgroups off: %s", strings.TrimSpace(res.stderr))
		}
		t.Log("podman runs containers here in a private mount namespace without /sys/fs/cgroup/unified, with --cgroups=disabled and rlimits within this process's")
	}
	if want := "ferry-controller " + version + " "; !strings.HasPrefix(res.stdout, want) {
		t.Errorf("ferry-controller --version in the container printed %q, want %q...", res.stdout, want)
	}

	// The controller on loopback (host network) with a temporary data dir
	// owned by the image's user.
	data := t.TempDir()
	if err := os.Chown(data, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o700); err != nil {
		t.Fatal(err)
	}
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	grpcAddr, httpAddr, gossipAddr := free(), free(), free()
	name := fmt.Sprintf("ferry-controller-test-%d", os.Getpid())
	args := append([]string{"run", "-d", "--name", name}, opts...)
	args = append(args, "-v", data+":/var/lib/ferry-controller", image,
		"--listen", grpcAddr, "--http-listen", httpAddr, "--gossip-listen", gossipAddr, "--advertise", grpcAddr)
	start := time.Now()
	if res := podman(private, args...); res.exit != 0 {
		t.Fatalf("podman run -d the controller: %s", res)
	}
	t.Cleanup(func() {
		podman(private, "rm", "-f", "-t", "5", name)
	})
	healthy := false
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				healthy = true
				break
			}
		}
	}
	if !healthy {
		logs := podman(private, "logs", name)
		t.Fatalf("the controller in the container did not answer http://%s/healthz within 60s; its log:\n%s%s", httpAddr, logs.stdout, logs.stderr)
	}
	t.Logf("the controller in the container answered /healthz %s after podman run", time.Since(start).Round(10*time.Millisecond))
	if c, err := net.DialTimeout("tcp", grpcAddr, 5*time.Second); err != nil {
		t.Errorf("the controller's gRPC port %s: %v", grpcAddr, err)
	} else {
		_ = c.Close()
	}
	// What it wrote in its data dir belongs to the image's user.
	var st syscall.Stat_t
	ents, _ := os.ReadDir(data)
	if len(ents) == 0 {
		t.Fatalf("the controller wrote nothing into its data volume %s", data)
	}
	for _, e := range ents {
		if err := syscall.Stat(filepath.Join(data, e.Name()), &st); err == nil && st.Uid != 65532 {
			t.Errorf("%s in the data volume belongs to uid %d, want 65532", e.Name(), st.Uid)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "admin.yaml")); err != nil {
		t.Errorf("no admin credential in the data volume: %v (it holds %s)", err, names(ents))
	}
}

func names(ents []os.DirEntry) string {
	var s []string
	for _, e := range ents {
		s = append(s, e.Name())
	}
	return strings.Join(s, " ")
}
