package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// version is what the test bundles are stamped with.
const version = "0.0.0-test"

const platform = "linux-amd64"

var repo = func() string {
	p, err := filepath.Abs("../../..")
	if err != nil {
		panic(err)
	}
	return p
}()

// release is one `make dist` run: its output folder and the key it signed
// with.
type release struct {
	out     string // dist folder: the tarball and SHA256SUMS
	key     string // the ed25519 private key ("" when ssh-keygen is missing)
	pub     string // its .pub
	seconds float64
	err     error
}

func (r *release) tarball() string {
	return filepath.Join(r.out, "ferry-"+version+"-"+platform+".tar.gz")
}

var (
	buildOnce sync.Once
	built     release
	scratch   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if scratch != "" {
		_ = os.RemoveAll(scratch)
	}
	os.Exit(code)
}

func needBundle(t *testing.T) {
	t.Helper()
	if os.Getenv("FERRY_BIN") == "" {
		t.Skip("release bundle tests skipped: FERRY_BIN is not set; run `make test` or `make e2e`")
	}
}

// bundle builds the amd64 bundle once (signed when ssh-keygen exists) and
// returns it.
func bundle(t *testing.T) *release {
	t.Helper()
	needBundle(t)
	buildOnce.Do(func() {
		var err error
		scratch, err = os.MkdirTemp("", "ferry-dist-test-")
		if err != nil {
			built.err = err
			return
		}
		if _, err := exec.LookPath("ssh-keygen"); err == nil {
			built.key = filepath.Join(scratch, "release-key")
			built.pub = built.key + ".pub"
			if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ferry release test", "-f", built.key).CombinedOutput(); err != nil {
				built.err = fmt.Errorf("ssh-keygen: %w\n%s", err, out)
				return
			}
		}
		built.out = filepath.Join(scratch, "dist")
		start := time.Now()
		built.err = runDist(built.out, built.key)
		built.seconds = time.Since(start).Seconds()
	})
	if built.err != nil {
		t.Fatalf("build the bundle: %v", built.err)
	}
	return &built
}

func runDist(out, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "deployments/dist/dist.sh"), version, out)
	cmd.Env = append(os.Environ(), "PLATFORMS=linux/amd64", "SIGNING_KEY="+key)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dist.sh %s: %w\n%s", version, err, b)
	}
	return nil
}

// extract unpacks the bundle into a new folder and returns the bundle's
// own folder (ferry-VERSION-linux-amd64).
func extract(t *testing.T, r *release) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-C", dir, "-xzf", r.tarball()).CombinedOutput(); err != nil {
		t.Fatalf("tar -xzf %s: %v\n%s", r.tarball(), err, out)
	}
	return filepath.Join(dir, "ferry-"+version+"-"+platform)
}

type result struct {
	stdout, stderr string
	exit           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.exit, r.stdout, r.stderr)
}

// run runs a command to completion (1 minute at most).
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runFor(t, time.Minute, name, args...)
}

// runFor runs a command to completion, d at most.
func runFor(t *testing.T, d time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s: still running after %s\n%s", name, strings.Join(args, " "), d, res)
	case errors.As(err, &ee):
		res.exit = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return res
}

// install runs the bundle's install.sh.
func install(t *testing.T, b string, args ...string) result {
	t.Helper()
	return run(t, filepath.Join(b, "install.sh"), args...)
}

func mustInstall(t *testing.T, b string, args ...string) result {
	t.Helper()
	r := install(t, b, args...)
	if r.exit != 0 {
		t.Fatalf("install.sh %s: %s", strings.Join(args, " "), r)
	}
	return r
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256Bytes(data)
}

func sha256Bytes(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// resum rewrites the bundle's SHA256SUMS after a test changed its files,
// as someone who altered the bundle would.
func resum(t *testing.T, b string) {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(b, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(b, path)
		if rel == "SHA256SUMS" || rel == "SHA256SUMS.sig" {
			return nil
		}
		lines = append(lines, sha256File(t, path)+"  "+rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "SHA256SUMS"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDistBundle checks the tarball as `make dist` leaves it: every entry
// owned by 0:0 with the commit's time, the files an operator needs with
// their modes, static binaries stamped with the version, SHA256SUMS beside
// it that matches, and a signature ssh-keygen -Y verify accepts.
func TestDistBundle(t *testing.T) {
	t.Parallel()
	r := bundle(t)
	fi, err := os.Stat(r.tarball())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %.0fs: %d bytes (%.1f MiB)", filepath.Base(r.tarball()), r.seconds, fi.Size(), float64(fi.Size())/(1<<20))

	commitTime, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%ct", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	stamp := strings.TrimSpace(string(commitTime))
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		stamp = e // dist.sh takes it over the commit's time
	}
	epoch, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		t.Fatalf("the bundle's time %q: %v", stamp, err)
	}
	f, err := os.Open(r.tarball())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header has name %q, time %v; want neither (gzip -n)", zr.Name, zr.ModTime)
	}
	top := "ferry-" + version + "-" + platform + "/"
	modes := map[string]int64{}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(hdr.Name, top) {
			t.Errorf("entry %s is outside %s", hdr.Name, top)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || hdr.ModTime.Unix() != epoch {
			t.Errorf("entry %s: owner %d:%d (%q:%q), time %v; want 0:0 without names at the commit's time %v",
				hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname, hdr.ModTime.UTC(), time.Unix(epoch, 0).UTC())
		}
		modes[strings.TrimPrefix(hdr.Name, top)] = hdr.Mode
	}
	for name, mode := range map[string]int64{
		"bin/ferry-controller": 0o755,
		"bin/ferry-agent":      0o755,
		"bin/ferryctl":         0o755,
		"install.sh":           0o755,
		"SHA256SUMS":           0o644,
		"README.md":            0o644,
		"VERSION":              0o644,
		"docs/security.md":     0o644,
		"deployments/systemd/ferry-controller.service": 0o644,
		"deployments/systemd/ferry-agent.service":      0o644,
		"deployments/systemd/ferry.sysusers":           0o644,
	} {
		got, ok := modes[name]
		switch {
		case !ok:
			t.Errorf("the bundle has no %s", name)
		case got != mode:
			t.Errorf("%s has mode %o, want %o", name, got, mode)
		}
	}
	configs, _ := filepath.Glob(filepath.Join(repo, "deployments/config/*.yaml"))
	for _, c := range configs {
		if _, ok := modes["deployments/config/"+filepath.Base(c)]; !ok {
			t.Errorf("the bundle lacks the example config %s", filepath.Base(c))
		}
	}
	if r.key != "" {
		if _, ok := modes["SHA256SUMS.sig"]; !ok {
			t.Errorf("a bundle built with SIGNING_KEY has no SHA256SUMS.sig")
		}
	}

	// The SHA256SUMS beside the tarball.
	if res := runIn(t, r.out, "sha256sum", "--check", "--strict", "SHA256SUMS"); res.exit != 0 {
		t.Errorf("sha256sum --check dist/SHA256SUMS: %s", res)
	}
	if r.key != "" {
		signers := filepath.Join(t.TempDir(), "allowed_signers")
		pub, err := os.ReadFile(r.pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(signers, []byte(`ferry-release namespaces="ferry-release" `+string(pub)), 0o644); err != nil {
			t.Fatal(err)
		}
		verify := fmt.Sprintf("ssh-keygen -Y verify -f %s -I ferry-release -n ferry-release -s SHA256SUMS.sig < SHA256SUMS", signers)
		if res := runIn(t, r.out, "sh", "-c", verify); res.exit != 0 || !strings.Contains(res.stdout, "Good") {
			t.Errorf("%s: %s", verify, res)
		}
	}

	// The binaries: static, and stamped with the version.
	b := extract(t, r)
	for _, bin := range []string{"ferry-controller", "ferry-agent", "ferryctl"} {
		path := filepath.Join(b, "bin", bin)
		ef, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s has an ELF interpreter: not a static build", bin)
			}
		}
		if ef.Machine != elf.EM_X86_64 {
			t.Errorf("%s is for %v, want x86-64", bin, ef.Machine)
		}
		ef.Close()
		res := run(t, path, "--version")
		if !strings.HasPrefix(res.stdout, bin+" "+version+" (commit ") {
			t.Errorf("%s --version: %s; want %s %s", bin, res, bin, version)
		}
	}
}

func runIn(t *testing.T, dir, name string, args ...string) result {
	t.Helper()
	return run(t, "sh", append([]string{"-c", `cd "$0" && exec "$@"`, dir, name}, args...)...)
}

// TestDistReproducible builds the bundle a second time, into another
// folder, and wants the same bytes. (make dist-check does this for both
// platforms with an empty Go build cache.)
func TestDistReproducible(t *testing.T) {
	t.Parallel()
	r := bundle(t)
	again := filepath.Join(t.TempDir(), "dist")
	start := time.Now()
	if err := runDist(again, r.key); err != nil {
		t.Fatal(err)
	}
	first := sha256File(t, r.tarball())
	second := sha256File(t, filepath.Join(again, filepath.Base(r.tarball())))
	t.Logf("two builds of %s (the second %.0fs): sha256 %s and %s", filepath.Base(r.tarball()), time.Since(start).Seconds(), first, second)
	if first != second {
		t.Errorf("two builds from the same commit differ: sha256 %s, then %s", first, second)
	}
	for _, name := range []string{"SHA256SUMS", "SHA256SUMS.sig"} {
		a, errA := os.ReadFile(filepath.Join(r.out, name))
		b, errB := os.ReadFile(filepath.Join(again, name))
		if errors.Is(errA, os.ErrNotExist) && r.key == "" && name == "SHA256SUMS.sig" {
			continue
		}
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between the two builds (errors %v, %v)", name, errA, errB)
		}
	}
}
