package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInstallRefusesAlteredBundles: install.sh checks the bundle before it
// changes anything, and a refusal names the file and leaves the root empty.
func TestInstallRefusesAlteredBundles(t *testing.T) {
	t.Parallel()
	r := bundle(t)
	otherKey := filepath.Join(t.TempDir(), "other")
	if r.key != "" {
		if res := run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", otherKey); res.exit != 0 {
			t.Fatal(res)
		}
	}
	for _, tc := range []struct {
		name   string
		signed bool // needs the bundle's signature
		alter  func(t *testing.T, b string)
		args   []string
		want   string // in stderr
	}{
		{
			name:  "a changed binary",
			alter: func(t *testing.T, b string) { flipByte(t, filepath.Join(b, "bin/ferry-agent")) },
			want:  `checksum mismatch in \S+: bin/ferry-agent \(does not match SHA256SUMS\)`,
		},
		{
			name: "a changed unit",
			alter: func(t *testing.T, b string) {
				appendTo(t, filepath.Join(b, "deployments/systemd/ferry-controller.service"), "ExecStartPre=/bin/sh -c 'curl evil'\n")
			},
			want: `deployments/systemd/ferry-controller.service \(does not match SHA256SUMS\)`,
		},
		{
			name: "a file SHA256SUMS does not list",
			alter: func(t *testing.T, b string) {
				appendTo(t, filepath.Join(b, "deployments/config/extra.yaml"), "listen: :1\n")
			},
			want: `files SHA256SUMS does not list: deployments/config/extra.yaml`,
		},
		{
			name:  "a missing file",
			alter: func(t *testing.T, b string) { rm(t, filepath.Join(b, "bin/ferryctl")) },
			want:  `bin/ferryctl`,
		},
		{
			name:  "no SHA256SUMS",
			alter: func(t *testing.T, b string) { rm(t, filepath.Join(b, "SHA256SUMS")) },
			want:  `SHA256SUMS is missing`,
		},
		{
			name:   "sums rewritten to match a changed binary, with the public key",
			signed: true,
			alter: func(t *testing.T, b string) {
				flipByte(t, filepath.Join(b, "bin/ferry-agent"))
				resum(t, b)
			},
			args: []string{"--public-key", r.pub},
			want: `SHA256SUMS.sig: the signature over SHA256SUMS does not verify with \S+release-key.pub .*refusing to install`,
		},
		{
			name:   "another key",
			signed: true,
			alter:  func(*testing.T, string) {},
			args:   []string{"--public-key", otherKey + ".pub"},
			want:   `SHA256SUMS.sig: the signature over SHA256SUMS does not verify with \S+other.pub`,
		},
		{
			name:   "no signature, with the public key",
			signed: true,
			alter:  func(t *testing.T, b string) { rm(t, filepath.Join(b, "SHA256SUMS.sig")) },
			args:   []string{"--public-key", r.pub},
			want:   `SHA256SUMS.sig is missing but --public-key was given`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.signed && r.key == "" {
				t.Skip("ssh-keygen is missing (Debian: apt-get install openssh-client): the bundle is not signed")
			}
			b := extract(t, r)
			tc.alter(t, b)
			root := filepath.Join(t.TempDir(), "root")
			res := install(t, b, append([]string{"agent", "--root", root, "--controller", "127.0.0.1:1", "--token", "x.y", "--ca-pin", "sha256:00"}, tc.args...)...)
			if res.exit == 0 || !regexp.MustCompile(tc.want).MatchString(res.stderr) {
				t.Errorf("install.sh: %s\nwant a refusal matching %q", res, tc.want)
			}
			if _, err := os.Stat(root); !os.IsNotExist(err) {
				t.Errorf("a refused install created %s (stat: %v)", root, err)
			}
		})
	}

	t.Run("the right key", func(t *testing.T) {
		if r.key == "" {
			t.Skip("ssh-keygen is missing (Debian: apt-get install openssh-client): the bundle is not signed")
		}
		b := extract(t, r)
		res := mustInstall(t, b, "controller", "--root", filepath.Join(t.TempDir(), "root"), "--dry-run", "--public-key", r.pub)
		if !strings.Contains(res.stdout, "verified: SHA256SUMS is signed by "+r.pub) {
			t.Errorf("install.sh --public-key did not say the signature was checked:\n%s", res)
		}
	})
}

// TestInstallControllerAndUpgrade installs the controller into a root:
// owners and modes, a dry run that changes nothing, a second run that
// changes nothing, and an upgrade that keeps the data dir and an edited
// config file.
func TestInstallControllerAndUpgrade(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: install.sh sets owners (ferry, root) under the temporary root")
	}
	r := bundle(t)
	b := extract(t, r)
	root := filepath.Join(t.TempDir(), "root")

	_, err := os.Stat(filepath.Join(b, "deployments/config/controller.yaml"))
	hasConfig := err == nil
	var settings []string // written into controller.yaml
	if hasConfig {
		settings = []string{"--listen", "127.0.0.1:7443", "--gossip-listen", "127.0.0.1:7946"}
	}
	res := mustInstall(t, b, append([]string{"controller", "--root", root, "--dry-run"}, settings...)...)
	if !strings.Contains(res.stdout, "would: install "+root+"/usr/local/bin/ferry-controller") || !strings.Contains(res.stdout, "nothing was changed") {
		t.Errorf("dry run output lacks what it would install:\n%s", res)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("--dry-run created %s", root)
	}

	res = mustInstall(t, b, append([]string{"controller", "--root", root}, settings...)...)
	t.Logf("first install:\n%s", res.stdout)
	uid := lookupID(t, filepath.Join(root, "etc/passwd"), "ferry")
	gid := lookupID(t, filepath.Join(root, "etc/group"), "ferry")
	want := map[string]struct {
		mode     os.FileMode
		uid, gid int
	}{
		"usr/local/bin/ferry-controller":              {0o755, 0, 0},
		"usr/local/bin/ferryctl":                      {0o755, 0, 0},
		"etc/systemd/system/ferry-controller.service": {0o644, 0, 0},
		"usr/lib/sysusers.d/ferry.conf":               {0o644, 0, 0},
		"etc/ferry":                                   {0o755 | os.ModeDir, 0, 0},
		"var/lib/ferry-controller":                    {0o700 | os.ModeDir, uid, gid},
	}
	if hasConfig {
		want["etc/ferry/controller.yaml"] = struct {
			mode     os.FileMode
			uid, gid int
		}{0o640, 0, gid}
	}
	for path, w := range want {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != w.mode || int(st.Uid) != w.uid || int(st.Gid) != w.gid {
			t.Errorf("/%s: %v %d:%d, want %v %d:%d", path, fi.Mode(), st.Uid, st.Gid, w.mode, w.uid, w.gid)
		}
	}
	for _, f := range []string{"ferry-controller", "ferryctl"} {
		if got, wantSum := sha256File(t, filepath.Join(root, "usr/local/bin", f)), sha256File(t, filepath.Join(b, "bin", f)); got != wantSum {
			t.Errorf("installed %s differs from the bundle's", f)
		}
	}
	config := filepath.Join(root, "etc/ferry/controller.yaml")
	if hasConfig {
		text := readFile(t, config)
		for _, line := range []string{
			`data-dir: "` + root + `/var/lib/ferry-controller"`,
			`listen: "127.0.0.1:7443"`,
			`gossip-listen: "127.0.0.1:7946"`,
		} {
			if !strings.Contains(text, "\n"+line+"\n") {
				t.Errorf("%s lacks the line %q:\n%s", config, line, text)
			}
		}
	}

	// A second run changes nothing: same output verdict, same files.
	before := snapshot(t, root)
	res = mustInstall(t, b, "controller", "--root", root)
	if !strings.Contains(res.stdout, "nothing to change") {
		t.Errorf("second run did not say it changed nothing:\n%s", res)
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("second run changed the root:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// The running controller's state, and an edit by the admin.
	writeFile(t, filepath.Join(root, "var/lib/ferry-controller/ferry.db"), "the store\n", 0o600)
	if hasConfig {
		appendTo(t, config, "log-level: debug\n")
	}
	edited := ""
	if hasConfig {
		edited = readFile(t, config)
	}

	// A newer bundle: other binary bytes, unit and example config.
	appendTo(t, filepath.Join(b, "bin/ferry-controller"), "\n")
	appendTo(t, filepath.Join(b, "deployments/systemd/ferry-controller.service"), "# newer\n")
	if hasConfig {
		appendTo(t, filepath.Join(b, "deployments/config/controller.yaml"), "# newer\n")
	}
	resum(t, b)
	res = mustInstall(t, b, "controller", "--root", root)
	t.Logf("upgrade:\n%s", res.stdout)
	if got := readFile(t, filepath.Join(root, "var/lib/ferry-controller/ferry.db")); got != "the store\n" {
		t.Errorf("the upgrade changed the data dir's ferry.db to %q", got)
	}
	if sha256File(t, filepath.Join(root, "usr/local/bin/ferry-controller")) != sha256File(t, filepath.Join(b, "bin/ferry-controller")) {
		t.Errorf("the upgrade did not replace the binary")
	}
	if !strings.HasSuffix(readFile(t, filepath.Join(root, "etc/systemd/system/ferry-controller.service")), "# newer\n") {
		t.Errorf("the upgrade did not replace the unit")
	}
	if hasConfig {
		if got := readFile(t, config); got != edited {
			t.Errorf("the upgrade changed the edited %s:\n%s", config, got)
		}
		news := readFile(t, config+".new")
		if !strings.HasSuffix(news, "# newer\n") || !strings.Contains(news, `listen: "127.0.0.1:7443"`) {
			t.Errorf("%s.new is not the new example with the settings:\n%s", config, news)
		}
		if !strings.Contains(res.stdout, "keep "+config+" (edited here)") {
			t.Errorf("the upgrade did not say it kept the edited config:\n%s", res.stdout)
		}
		// An unedited config follows the bundle: take the edit back and
		// run again.
		if err := os.WriteFile(config, []byte(readFile(t, config+".new")), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// Once more: nothing to change.
	if res := mustInstall(t, b, "controller", "--root", root); !strings.Contains(res.stdout, "nothing to change") {
		t.Errorf("a run after the upgrade changed something:\n%s", res)
	}
}

// TestInstallAgentNeedsEnrollment: an agent that is not enrolled yet needs
// the token, the refusal says so, and --dry-run shows the enroll command
// without the token's secret.
func TestInstallAgentNeedsEnrollment(t *testing.T) {
	t.Parallel()
	r := bundle(t)
	b := extract(t, r)
	root := filepath.Join(t.TempDir(), "root")
	res := install(t, b, "agent", "--root", root)
	if res.exit == 0 || !strings.Contains(res.stderr, "the node is not enrolled yet: give --controller HOST:PORT --token T --ca-pin sha256:HEX") {
		t.Errorf("install.sh agent without a token: %s", res)
	}
	res = mustInstall(t, b, "agent", "--root", root, "--dry-run", "--controller", "127.0.0.1:7443", "--token", "abc.secret123", "--ca-pin", "sha256:00", "--label", "rack=r1")
	if strings.Contains(res.stdout+res.stderr, "secret123") {
		t.Errorf("--dry-run printed the token's secret:\n%s", res)
	}
	if !strings.Contains(res.stdout, "would: ferry-agent enroll --controller 127.0.0.1:7443 --token *** --ca-pin sha256:00 --state-dir "+root+"/var/lib/ferry-agent --label rack=r1") {
		t.Errorf("--dry-run does not show the enroll command:\n%s", res)
	}
	for _, bad := range [][]string{
		{"agent", "--listen", ":1"},
		{"controller", "--token", "x"},
		{"agent", "--label", "nolabel"},
		{"database"},
	} {
		if res := install(t, b, append(bad, "--root", root)...); res.exit == 0 || !strings.Contains(res.stderr, "install.sh: ") {
			t.Errorf("install.sh %s: %s; want a refusal", strings.Join(bad, " "), res)
		}
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func appendTo(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func rm(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

// lookupID reads a user's or group's numeric ID from a passwd or group
// file.
func lookupID(t *testing.T, file, name string) int {
	t.Helper()
	for _, line := range strings.Split(readFile(t, file), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			id, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("%s: %s has ID %q", file, name, f[2])
			}
			return id
		}
	}
	t.Fatalf("%s has no %s", file, name)
	return 0
}

// snapshot lists every path under root with its mode, owner, size and
// modification time, to tell whether a run changed anything.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		b.WriteString(strings.TrimPrefix(path, root) + " " + fi.Mode().String() + " " +
			strconv.Itoa(int(st.Uid)) + ":" + strconv.Itoa(int(st.Gid)) + " " + strconv.FormatInt(fi.Size(), 10) + " " + fi.ModTime().Format(time.RFC3339Nano) + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestInstallControllerWithUseradd: without systemd-sysusers, install.sh
// creates the ferry user with useradd.
func TestInstallControllerWithUseradd(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: install.sh sets owners (ferry, root) under the temporary root")
	}
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Skip("useradd not found (Debian: apt-get install passwd)")
	}
	r := bundle(t)
	b := extract(t, r)
	// A PATH with every command of this machine but systemd-sysusers.
	path := t.TempDir()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() == "systemd-sysusers" {
				continue
			}
			_ = os.Symlink(filepath.Join(dir, e.Name()), filepath.Join(path, e.Name())) // the first one on PATH wins
		}
	}
	root := filepath.Join(t.TempDir(), "root")
	res := run(t, "env", "PATH="+path, filepath.Join(b, "install.sh"), "controller", "--root", root)
	if res.exit != 0 || !strings.Contains(res.stdout, "create the ferry user (useradd)") {
		t.Fatalf("install.sh without systemd-sysusers: %s", res)
	}
	uid := lookupID(t, filepath.Join(root, "etc/passwd"), "ferry")
	fi, err := os.Stat(filepath.Join(root, "var/lib/ferry-controller"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir is %v owned by %d, want 0700 owned by ferry (%d)", fi.Mode(), st.Uid, uid)
	}
	if !strings.Contains(readFile(t, filepath.Join(root, "etc/passwd")), ":/var/lib/ferry-controller:/usr/sbin/nologin") {
		t.Errorf("the ferry user's home or shell is not the data dir and nologin:\n%s", readFile(t, filepath.Join(root, "etc/passwd")))
	}
}
