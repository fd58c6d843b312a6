package deploy

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// unitDir is deployments/systemd, relative to this package, and configDir
// the example config files the bundle installs to /etc/ferry.
const (
	unitDir   = "../../../deployments/systemd"
	configDir = "../../../deployments/config"
)

var units = []struct {
	file, binary string
}{
	{"ferry-controller.service", "ferry-controller"},
	{"ferry-agent.service", "ferry-agent"},
}

// systemUnitDir finds the host's packaged units (sysinit.target and the
// rest), which the units' implicit dependencies need.
func systemUnitDir() string {
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			return d
		}
	}
	return ""
}

// TestSystemdUnitsVerify runs `systemd-analyze verify` on both units as
// they would be installed: in a scratch root with the units under
// /etc/systemd/system, the distribution's units under /usr/lib/systemd/system
// and executables at /usr/local/bin. verify exits 0 even for unknown keys
// and unparsable values, so any output at all fails the test.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found (Debian: apt-get install systemd); the unit files were not verified")
	}
	sysUnits := systemUnitDir()
	if sysUnits == "" {
		t.Skip("no systemd unit directory with sysinit.target on this host; the unit files were not verified")
	}
	root := t.TempDir()
	if err := copyTree(sysUnits, filepath.Join(root, "usr/lib/systemd/system")); err != nil {
		t.Fatalf("copy the host's units into the scratch root: %v", err)
	}
	var names []string
	for _, u := range units {
		data, err := os.ReadFile(filepath.Join(unitDir, u.file))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, "etc/systemd/system", u.file), data, 0o644)
		// verify checks that ExecStart's binary exists and is executable
		// under the root; a stub is enough.
		writeFile(t, filepath.Join(root, "usr/local/bin", u.binary), []byte("#!/bin/sh\nexit 0\n"), 0o755)
		names = append(names, u.file)
	}
	writeFile(t, filepath.Join(root, "bin/kill"), []byte("#!/bin/sh\nexit 0\n"), 0o755) // ExecReload
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, append([]string{"verify", "--root=" + root}, names...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if err != nil || out.Len() > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", strings.Join(names, " "), err, out.String())
	}
}

// copyTree copies folders, regular files and symlinks (as links, targets
// unchanged) from src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		}
		return nil
	})
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// unit is a parsed unit file: directive -> values, continuation lines joined.
type unit map[string][]string

func parseUnit(t *testing.T, file string) unit {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(unitDir, file))
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not key=value", file, line)
		}
		u[k] = append(u[k], strings.Join(strings.Fields(v), " "))
	}
	return u
}

func (u unit) get(k string) string {
	if v := u[k]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// TestSystemdUnitsContent checks what the units promise an operator: the
// installed binaries, restart on failure, a state directory matching the
// data-dir/state-dir default of the shipped config file, config from
// /etc/ferry, reload by SIGHUP, and hardening that fits each daemon.
func TestSystemdUnitsContent(t *testing.T) {
	for _, tc := range []struct {
		file, binary, stateDir, key, config, protectSystem string
	}{
		{"ferry-controller.service", "ferry-controller", "ferry-controller", "data-dir", "controller.yaml", "strict"},
		// The agent installs into /usr/local, /opt and /etc: ProtectSystem
		// must stay off.
		{"ferry-agent.service", "ferry-agent", "ferry-agent", "state-dir", "agent.yaml", ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			u := parseUnit(t, tc.file)
			exec := u.get("ExecStart")
			if !strings.HasPrefix(exec, "/usr/local/bin/"+tc.binary+" ") {
				t.Errorf("ExecStart = %q, want /usr/local/bin/%s", exec, tc.binary)
			}
			if want := "--config /etc/ferry/" + tc.config; !strings.HasSuffix(exec, want) {
				t.Errorf("ExecStart = %q, want it to end with %q", exec, want)
			}
			// The shipped config file leaves the state dir at its default,
			// which must be the StateDirectory systemd creates.
			example, err := os.ReadFile(filepath.Join(configDir, tc.config))
			if err != nil {
				t.Fatal(err)
			}
			if want := "#" + tc.key + ": /var/lib/" + tc.stateDir + "\n"; !strings.Contains(string(example), want) {
				t.Errorf("%s does not show the default %q, the unit's StateDirectory", tc.config, strings.TrimSpace(want))
			}
			for k, want := range map[string]string{
				"Type":           "notify",
				"Restart":        "on-failure",
				"StateDirectory": tc.stateDir,
				"ExecReload":     "/bin/kill -HUP $MAINPID",
				"ProtectSystem":  tc.protectSystem,
				"WantedBy":       "multi-user.target",
			} {
				if got := u.get(k); got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			if _, ok := u["EnvironmentFile"]; ok {
				t.Errorf("EnvironmentFile= is set; settings come from /etc/ferry/%s", tc.config)
			}
		})
	}
}

// TestSystemdUnitsFlagsExist checks every --flag in ExecStart against the
// built binary's own help, so renaming a flag cannot silently break the
// installed service.
func TestSystemdUnitsFlagsExist(t *testing.T) {
	bin := os.Getenv("FERRY_BIN")
	if bin == "" {
		t.Skip("FERRY_BIN is not set: run `make test`, or `make build` and set FERRY_BIN to the repository's bin folder")
	}
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			execStart := parseUnit(t, u.file).get("ExecStart")
			args := strings.Fields(execStart)[1:]
			helpArgs := []string{"-h"}
			if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
				helpArgs = []string{args[0], "-h"} // a subcommand: ferry-agent run
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, _ := exec.CommandContext(ctx, filepath.Join(bin, u.binary), helpArgs...).CombinedOutput()
			for _, a := range args {
				if !strings.HasPrefix(a, "--") {
					continue
				}
				// cobra prints "  -x, --name value" or "      --name value".
				if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(a) + `\b`).Match(out) {
					t.Errorf("ExecStart passes %s, which %s %s does not list:\n%s", a, u.binary, strings.Join(helpArgs, " "), out)
				}
			}
		})
	}
}
