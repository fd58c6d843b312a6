package daemonconfig_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/shared/daemonconfig"
)

// settings stands in for a daemon's flags: one of each kind of value.
type settings struct {
	config   string
	dir      string
	interval time.Duration
	max      int
	names    []string
	level    slog.Level
	profile  string
	once     bool
}

func newFlags(s *settings) *pflag.FlagSet {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	fs.StringVar(&s.config, "config", "", "")
	fs.StringVar(&s.dir, "data-dir", "/var/lib/x", "")
	fs.DurationVar(&s.interval, "heartbeat-interval", 5*time.Second, "")
	fs.IntVar(&s.max, "max-downloads", 8, "")
	fs.StringSliceVar(&s.names, "server-names", nil, "")
	s.level = slog.LevelInfo
	fs.Var(daemonconfig.LevelValue{L: &s.level}, "log-level", "")
	s.profile = "lan"
	fs.Var(daemonconfig.ChoiceValue{S: &s.profile, Choices: []string{"lan", "local", "wan"}}, "gossip-profile", "")
	fs.BoolVar(&s.once, "new-store", false, "")
	daemonconfig.MarkCommandLineOnly(fs, "new-store")
	return fs
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApply(t *testing.T) {
	p := writeConfig(t, "# settings\ndata-dir: /srv/x\nheartbeat-interval: 2s\nmax-downloads: 3\nserver-names: [a.example, 10.0.0.1]\nlog-level: debug\ngossip-profile: wan\n")
	var s settings
	fs := newFlags(&s)
	if err := fs.Parse([]string{"--max-downloads", "4"}); err != nil {
		t.Fatal(err)
	}
	if err := daemonconfig.Load(p, true, fs, nil); err != nil {
		t.Fatal(err)
	}
	if s.dir != "/srv/x" || s.interval != 2*time.Second || s.level != slog.LevelDebug || s.profile != "wan" || strings.Join(s.names, ",") != "a.example,10.0.0.1" {
		t.Errorf("file not applied: %+v", s)
	}
	if s.max != 4 {
		t.Errorf("max-downloads = %d, want 4: the flag given on the command line overrides the file", s.max)
	}
	if fs.Changed("data-dir") {
		t.Error("a key from the file marks its flag as given on the command line")
	}
}

func TestApplyErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", "log-level: info\nlisten-addr: :1\n", `x.yaml:2: unknown key "listen-addr"; the keys are the flags: data-dir, gossip-profile, heartbeat-interval, log-level, max-downloads, server-names`},
		{"bad duration", "\n\nheartbeat-interval: 5\n", `x.yaml:3: heartbeat-interval: "5" is not a duration; write it like 5s, 1m30s or 720h`},
		{"bad int", "max-downloads: many\n", `x.yaml:1: max-downloads: "many" is not a whole number`},
		{"bad level", "log-level: verbose\n", `x.yaml:1: log-level: "verbose" is not a log level; use debug, info, warn or error`},
		{"bad choice", "gossip-profile: fast\n", `x.yaml:1: gossip-profile: "fast" is not one of lan, local, wan`},
		{"no value", "data-dir:\n", `x.yaml:1: data-dir: has no value`},
		{"list for one value", "data-dir: [a, b]\n", `x.yaml:1: data-dir: takes one string, not a list`},
		{"mapping value", "max-downloads:\n  a: 1\n", `x.yaml:1: max-downloads: takes one int, not a mapping`},
		{"given twice", "log-level: info\nlog-level: debug\n", `x.yaml:2: log-level is given twice (first on line 1)`},
		{"command line only", "new-store: true\n", `x.yaml:1: new-store: is a command-line flag only`},
		{"config in config", "config: /etc/other.yaml\n", `x.yaml:1: config: is a command-line flag only`},
		{"not a mapping", "- log-level\n", `x.yaml:1: want key: value lines (a mapping), not a list`},
		{"not yaml", "log-level: [info\n", `x.yaml: `},
		{"two documents", "log-level: info\n---\nlog-level: debug\n", `x.yaml:2: a second YAML document`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.text)
			var s settings
			fs := newFlags(&s)
			err := daemonconfig.Load(p, true, fs, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), p) {
				t.Errorf("error %q does not start with the file's path", err)
			}
		})
	}
}

func TestLoadMissingAndEmpty(t *testing.T) {
	var s settings
	fs := newFlags(&s)
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if err := daemonconfig.Load(missing, false, fs, nil); err != nil {
		t.Errorf("a missing default file: %v, want no error", err)
	}
	if err := daemonconfig.Load(missing, true, fs, nil); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing file named by --config: %v, want an error", err)
	}
	if err := daemonconfig.Load(writeConfig(t, "# all commented\n#log-level: debug\n"), true, fs, nil); err != nil || s.level != slog.LevelInfo {
		t.Errorf("a file of comments: %v, level %v", err, s.level)
	}
	if err := daemonconfig.Load("", true, fs, nil); err != nil {
		t.Errorf(`--config "": %v, want no file read`, err)
	}
}

func TestApplyKnownElsewhere(t *testing.T) {
	p := writeConfig(t, "data-dir: /srv/x\nroot: /mnt\n")
	var s settings
	fs := newFlags(&s)
	known := func(k string) bool { return k == "root" }
	if err := daemonconfig.Load(p, true, fs, known); err != nil || s.dir != "/srv/x" {
		t.Fatalf("Load = %v, data-dir %q; want root skipped as another command's key", err, s.dir)
	}
}

func TestKeysLeaveOutCommandLineOnly(t *testing.T) {
	var s settings
	got := strings.Join(daemonconfig.Keys(newFlags(&s)), " ")
	if want := "data-dir gossip-profile heartbeat-interval log-level max-downloads server-names"; got != want {
		t.Errorf("Keys = %q, want %q", got, want)
	}
}

func TestReload(t *testing.T) {
	p := writeConfig(t, "log-level: info\nheartbeat-interval: 5s\ndata-dir: /a\n")
	args := []string{"--config", p, "--max-downloads", "3"}
	parse := func() (*settings, *pflag.FlagSet, error) {
		s := &settings{}
		fs := newFlags(s)
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		return s, fs, daemonconfig.Load(s.config, true, fs, nil)
	}
	_, running, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var applied []*settings
	r := &daemonconfig.Reloader[*settings]{
		Parse: parse,
		Live:  []string{"log-level", "heartbeat-interval", "max-downloads"},
		Apply: func(next *settings, _ []daemonconfig.Change) error {
			applied = append(applied, next)
			return nil
		},
		Running: running,
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
	}

	// The file changes two live keys and one that needs a restart; the
	// flag given on the command line still wins over the file.
	if err := os.WriteFile(p, []byte("log-level: debug\nheartbeat-interval: 2s\ndata-dir: /b\nmax-downloads: 9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, restart, err := r.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].String() != "heartbeat-interval: 5s -> 2s" || got[1].String() != "log-level: info -> debug" {
		t.Errorf("applied %v, want heartbeat-interval and log-level", got)
	}
	if len(restart) != 1 || restart[0].Key != "data-dir" {
		t.Errorf("need a restart: %v, want data-dir", restart)
	}
	if len(applied) != 1 || applied[0].level != slog.LevelDebug || applied[0].interval != 2*time.Second || applied[0].max != 3 {
		t.Errorf("Apply got %+v", applied)
	}
	for _, want := range []string{`msg="config reloaded: setting changed" key=log-level old=info new=debug`, `level=WARN msg="config changed but this setting needs a restart; the running value stays until then" key=data-dir running=/a file=/b`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logs.String())
		}
	}

	// Reloading the same file again applies nothing new and still warns
	// about the key waiting for a restart.
	logs.Reset()
	if got, restart, err := r.Reload(); err != nil || len(got) != 0 || len(restart) != 1 {
		t.Errorf("second reload: applied %v, restart %v, %v", got, restart, err)
	}

	// A bad file changes nothing and says why.
	logs.Reset()
	if err := os.WriteFile(p, []byte("log-level: loud\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Reload(); err == nil || !strings.Contains(logs.String(), "config not reloaded") || !strings.Contains(logs.String(), "x.yaml:1: log-level") {
		t.Errorf("bad file: %v\n%s", err, logs.String())
	}
	if len(applied) != 1 {
		t.Errorf("a bad file was applied")
	}
}
