package controller

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/shared/daemonconfig/configtest"
)

// exampleConfig is the commented controller.yaml the bundle installs.
const exampleConfig = "../../deployments/config/controller.yaml"

// TestExampleConfigHasEveryFlag walks the controller's flags: each one a
// file may set is documented in the example with its default.
func TestExampleConfigHasEveryFlag(t *testing.T) {
	configtest.CheckExample(t, exampleConfig, func() *pflag.FlagSet {
		fs := pflag.NewFlagSet("ferry-controller", pflag.ContinueOnError)
		(&options{}).define(fs)
		return fs
	}, "new-store") // a one-off decision that must not repeat on every start
}

func TestConfigFileUnderFlags(t *testing.T) {
	p := filepath.Join(t.TempDir(), "controller.yaml")
	if err := os.WriteFile(p, []byte("log-level: debug\nmax-downloads: 3\nserver-names: [a.example, 10.0.0.9]\nheartbeat-interval: 2s\npeer-exchange: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, _, err := parseOptions([]string{"--config", p, "--log-level", "warn", "--data-dir", "/srv/ferry"})
	if err != nil {
		t.Fatal(err)
	}
	if o.level.String() != "WARN" {
		t.Errorf("log level %v: the flag must override the file's debug", o.level)
	}
	if o.cfg.MaxDownloads != 3 || o.cfg.HeartbeatInterval.String() != "2s" || strings.Join(o.cfg.ServerNames, ",") != "a.example,10.0.0.9" || o.cfg.DataDir != "/srv/ferry" {
		t.Errorf("settings %+v", o.cfg)
	}
	if !o.cfg.PeerExchangeOff {
		t.Error("peer-exchange: false in the file left peer exchange on")
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if o, _, err := parseOptions([]string{"--config", empty}); err != nil || o.cfg.PeerExchangeOff {
		t.Errorf("no peer-exchange key: %v, off %v; peer exchange must be on by default", err, o != nil && o.cfg.PeerExchangeOff)
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", "# c\nlisten: 127.0.0.1:0\nmax_downloads: 3\n", `controller.yaml:3: unknown key "max_downloads"; the keys are the flags: advertise, agent-cert-ttl, controller-id, data-dir,`},
		{"bad value", "log-level: info\n\nheartbeat-interval: often\n", `controller.yaml:3: heartbeat-interval: "often" is not a duration; write it like 5s, 1m30s or 720h`},
		{"one-off flag", "new-store: true\n", `controller.yaml:1: new-store: is a command-line flag only`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name, "controller.yaml")
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, errOut := main(t, "--config", p, "--data-dir", filepath.Join(dir, "data"))
			if code != 2 || !strings.Contains(errOut, p+strings.TrimPrefix(tc.want, "controller.yaml")) {
				t.Errorf("exit %d: %s; want 2 and %q", code, errOut, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
				t.Errorf("a refused config created the data dir (%v)", err)
			}
		})
	}
	if code, _, errOut := main(t, "--config", filepath.Join(dir, "none.yaml")); code != 2 || !strings.Contains(errOut, "none.yaml: no such file") {
		t.Errorf("a missing --config file: exit %d: %s", code, errOut)
	}
}

// A size reads back as it prints, so a reload compares like with like.
func TestSizeFlags(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"256KiB", "256KiB"}, {"262144", "256KiB"}, {"1GiB", "1GiB"}, {"1000", "1000"}, {"3MiB", "3MiB"},
	} {
		var n int
		f := sizeFlag{&n}
		if err := f.Set(tc.in); err != nil || f.String() != tc.want {
			t.Errorf("Set(%q): %v, String() = %q, want %q", tc.in, err, f.String(), tc.want)
		}
	}
	var n int
	if err := (sizeFlag{&n}).Set("2GiB"); err == nil {
		t.Error("log-max-per-job accepted 2GiB, more than 1GiB")
	}
	var total uint64
	if err := (totalFlag{&total}).Set("10GiB"); err != nil || (totalFlag{&total}).String() != "10GiB" {
		t.Errorf("log-max-total 10GiB: %v, %q", err, totalFlag{&total}.String())
	}
}
