package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/shared/daemonconfig/configtest"
)

const exampleConfig = "../../../deployments/config/agent.yaml"

func main(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestExampleConfigHasEveryFlag walks run's flags: each is documented in
// agent.yaml with its default.
func TestExampleConfigHasEveryFlag(t *testing.T) {
	configtest.CheckExample(t, exampleConfig, func() *pflag.FlagSet {
		fs := pflag.NewFlagSet("ferry-agent run", pflag.ContinueOnError)
		(&runOptions{}).define(fs)
		return fs
	})
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunConfigUnderFlags(t *testing.T) {
	p := writeFile(t, "state-dir: /srv/agent\nroot: /mnt/root\nlog-level: debug\nreconnect-max: 1m\ngossip-listen: \"\"\n")
	o, _, err := parseRun([]string{"--config", p, "--root", "/other"})
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.StateDir != "/srv/agent" || o.cfg.Root != "/other" || o.level.String() != "DEBUG" || o.cfg.BackoffMax.String() != "1m0s" || o.cfg.Gossip.Addr != "" {
		t.Errorf("settings %+v level %v; want the file's values under --root /other", o.cfg, o.level)
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		text string
		want string
	}{
		{"run unknown key", []string{"run"}, "root: /\nheartbeat-interval: 1s\n", `agent.yaml:2: unknown key "heartbeat-interval"; the keys are the flags: controller, drift-interval, gossip-advertise,`},
		{"run bad value", []string{"run"}, "\nreconnect-max: soon\n", `agent.yaml:2: reconnect-max: "soon" is not a duration; write it like 5s, 1m30s or 720h`},
		{"run bad profile", []string{"run"}, "gossip-profile: lanx\n", `agent.yaml:1: gossip-profile: "lanx" is not one of lan, local, wan`},
		{"enroll unknown key", []string{"enroll", "--token", "t"}, "state-dir: /x\nnode: a\n", `agent.yaml:2: unknown key "node"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.text)
			code, _, errOut := main(t, append(tc.args, "--config", p)...)
			if code != 2 || !strings.Contains(errOut, filepath.Dir(p)+"/"+tc.want) {
				t.Errorf("exit %d: %s; want 2 and %q", code, errOut, tc.want)
			}
		})
	}
}

// TestEnrollReadsSharedKeys: enroll takes state-dir and controller from
// agent.yaml and skips run's other keys.
func TestEnrollReadsSharedKeys(t *testing.T) {
	p := writeFile(t, "state-dir: /srv/agent\ncontroller: ctl.example:7443\nreconnect-max: 1m\nlog-level: debug\n")
	code, _, errOut := main(t, "enroll", "--config", p, "--ca-pin", "sha256:00")
	if code != 2 || !strings.Contains(errOut, "enroll needs --token") {
		t.Errorf("exit %d: %s; want the file accepted and --token asked for", code, errOut)
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := main(t, "enroll", "--help")
	if code != 0 {
		t.Fatalf("enroll --help: exit %d", code)
	}
	for _, bad := range []string{"ferryctl token create` ", "--ca-pin ferryctl", "(default: host name) (default"} {
		if strings.Contains(out, bad) {
			t.Errorf("enroll --help shows %q:\n%s", bad, out)
		}
	}
	for _, want := range []string{"--ca-pin sha256:HEX ", "--node-id ID ", "node ID, lowercase (default: this host's name)\n", "--config string"} {
		if !strings.Contains(out, want) {
			t.Errorf("enroll --help lacks %q:\n%s", want, out)
		}
	}
	if code, _, errOut := main(t); code != 2 || !strings.Contains(errOut, "Available Commands") {
		t.Errorf("no command: exit %d: %s; want 2 and the help", code, errOut)
	}
	if code, _, errOut := main(t, "nope"); code != 2 || !strings.Contains(errOut, `unknown command "nope"`) {
		t.Errorf("unknown command: exit %d: %s", code, errOut)
	}
}

// The controllers are a list: a YAML list or one comma-separated value in
// agent.yaml, and --controller a,b or the flag repeated on the command
// line, which replaces the file's.
func TestControllerList(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		args []string
		want []string
	}{
		{"YAML list", "controller:\n  - a.example:7443\n  - b.example:7443\n", nil, []string{"a.example:7443", "b.example:7443"}},
		{"YAML flow list", "controller: [a.example:7443, b.example:7443]\n", nil, []string{"a.example:7443", "b.example:7443"}},
		{"one comma-separated value", "controller: a.example:7443,b.example:7443\n", nil, []string{"a.example:7443", "b.example:7443"}},
		{"one name", "controller: ctl.example:7443\n", nil, []string{"ctl.example:7443"}},
		{"the flag repeated overrides the file", "controller: [a.example:7443]\n", []string{"--controller", "c.example:7443", "--controller", "d.example:7443"}, []string{"c.example:7443", "d.example:7443"}},
		{"the flag comma-separated", "", []string{"--controller", "c.example:7443,d.example:7443"}, []string{"c.example:7443", "d.example:7443"}},
		{"none: the ones recorded at enrollment", "root: /\n", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _, err := parseRun(append([]string{"--config", writeFile(t, tc.file)}, tc.args...))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(o.cfg.Controllers, tc.want) {
				t.Errorf("controllers %q, want %q", o.cfg.Controllers, tc.want)
			}
		})
	}
}

// An address without a port is refused when the agent starts, naming it.
func TestControllerWithoutPort(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := main(t, "enroll", "--config", writeFile(t, ""), "--state-dir", dir, "--controller", "a.example:7443,b.example", "--token", "t.s", "--ca-pin", "sha256:"+strings.Repeat("0", 64), "--node-id", "n1")
	if code == 0 || !strings.Contains(errOut, `controller address "b.example" is not HOST:PORT`) {
		t.Errorf("exit %d: %s; want the address without a port named", code, errOut)
	}
}
