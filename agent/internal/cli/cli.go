// Package cli is the ferry-agent command line: enroll, run, doctor, verify, version.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	"github.com/ferrydeploy/ferry/shared/daemonconfig"
	"github.com/ferrydeploy/ferry/shared/dirlock"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/version"
)

// defaultStateDir is the one package apply refuses steps to write in by
// name; the agent refuses its actual --state-dir too.
const defaultStateDir = installpolicy.DefaultStateDir

const defaultConfig = "/etc/ferry/agent.yaml"

// controllerUsage is the help of --controller, which run, enroll and
// doctor share.
const controllerUsage = "controller gRPC address `HOST:PORT`; with several controllers give each (a:7443,b:7443, or the flag repeated) or one name that resolves to several"

// liveKeys are the settings of `run` a reload (SIGHUP) applies while the
// agent runs; every other key needs a restart.
var liveKeys = []string{"log-level", "reconnect-max"}

// Main runs the command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	var systemdRestart bool // run ended for systemd to start the agent again
	code := daemonconfig.Execute(rootCmd(args, stdout, stderr, &systemdRestart), "ferry-agent", args, stdout, stderr)
	if systemdRestart {
		return selfupdate.ExitRestart // the unit starts the swapped (or restored) binary
	}
	return code
}

func rootCmd(args []string, stdout, stderr io.Writer, systemdRestart *bool) *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry-agent",
		Short: "ferry-agent runs on every node: it enrolls once, then keeps a stream to the Ferry controller, heartbeats, and installs what rollouts send it",
		Long: `ferry-agent runs on every node: it enrolls once, then keeps a stream to the
Ferry controller, heartbeats, and installs what rollouts send it.

Settings of run (and the state-dir and controller of enroll) come from the
flags and from the config file (--config, default /etc/ferry/agent.yaml),
whose keys are the flags' names; a flag given on the command line overrides
the file.`,
		Args: func(_ *cobra.Command, a []string) error {
			if len(a) > 0 {
				return daemonconfig.Usage(fmt.Errorf("unknown command %q; the commands are enroll, run, doctor, verify and version", a[0]))
			}
			return nil
		},
		Version: version.String("ferry-agent"),
		// Without a command: the help, and exit code 2 as for any
		// command line it cannot run.
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(stderr)
			_ = cmd.Help() // writes to stderr; nothing to do if that fails
			return daemonconfig.Usage(errors.New("a command is required: enroll, run, doctor, verify or version"))
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	runArgs := args
	if len(runArgs) > 0 {
		runArgs = runArgs[1:] // reload parses run's flags again
	}
	root.AddCommand(enrollCmd(stdout), runCmd(runArgs, stderr, systemdRestart), doctorCmd(stdout), verifyCmd(stdout), watchCmd(stderr), &cobra.Command{
		Use:   "version",
		Short: "Print the ferry-agent version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(stdout, version.String("ferry-agent")) },
	})
	return root
}

func noArgs(cmd *cobra.Command, a []string) error {
	if len(a) > 0 {
		return daemonconfig.Usage(fmt.Errorf("%s takes no arguments, got %q", cmd.Name(), a))
	}
	return nil
}

type labelFlag map[string]string

func (l labelFlag) String() string { return "" }
func (l labelFlag) Set(v string) error {
	for _, kv := range strings.Split(v, ",") {
		k, val, err := labels.Parse(kv)
		if err != nil {
			return err
		}
		l[k] = val
	}
	return labels.Validate(l)
}
func (labelFlag) Type() string { return "key=value" }

// runOptions is what run's flags and the config file set.
type runOptions struct {
	cfg          agent.Config
	level        slog.Level
	configPath   string
	peerExchange bool // cfg.NoPeerExchange inverted, as the flag reads
}

// define binds every flag of run to o. A flag is a key of agent.yaml by
// the same name (deployments/config/agent.yaml documents each).
func (o *runOptions) define(fs *pflag.FlagSet) {
	fs.StringVar(&o.configPath, "config", defaultConfig, "config file; its keys are these flags, which override it (a missing default file is no error)")
	fs.StringVar(&o.cfg.StateDir, "state-dir", defaultStateDir, "where the agent keeps its identity and state")
	fs.StringVar(&o.cfg.Root, "root", "/", "install root every package path resolves under")
	fs.StringSliceVar(&o.cfg.Controllers, "controller", nil, controllerUsage+" (default: the ones given at enrollment)")
	fs.DurationVar(&o.cfg.BackoffMax, "reconnect-max", 30*time.Second, "longest delay between reconnect attempts (live on reload)")
	daemonconfig.GossipFlags(fs, &o.cfg.Gossip.Addr, &o.cfg.Gossip.AdvertiseAddr, &o.cfg.Gossip.Profile, "peers")
	fs.DurationVar(&o.cfg.DriftInterval, "drift-interval", agent.DefaultDriftInterval, "how often to check the installed files against what Ferry installed (sizes, modes, times); 0 = never")
	fs.StringVar(&o.cfg.MetricsAddr, "metrics-listen", "", `serve the agent's /metrics on this address, e.g. 127.0.0.1:9481 ("" = off)`)
	fs.StringVar(&o.cfg.PeerListen, "peer-listen", "", `serve verified pieces of this agent's downloads to other agents on this address, e.g. :7947, and fetch pieces from them (peer exchange; "" = off)`)
	fs.BoolVar(&o.peerExchange, "peer-exchange", true, "peer exchange with --peer-listen; false: serve no pieces and download from the controller only")
	o.level = slog.LevelInfo
	fs.Var(daemonconfig.LevelValue{L: &o.level}, "log-level", "log level: debug, info, warn, error (live on reload)")
}

// parseRun reads run's settings as at start: the command line, then the
// config file under it. A reload calls it again.
func parseRun(args []string) (*runOptions, *pflag.FlagSet, error) {
	o := &runOptions{}
	fs := pflag.NewFlagSet("ferry-agent run", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.define(fs)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if err := daemonconfig.Load(o.configPath, fs.Changed("config"), fs, nil); err != nil {
		return nil, nil, err
	}
	return o, fs, nil
}

func enrollCmd(stdout io.Writer) *cobra.Command {
	o := enroll.Options{Labels: map[string]string{}}
	var configPath string
	cmd := &cobra.Command{
		Use:   "enroll --controller HOST:PORT --token T --ca-pin sha256:HEX [flags]",
		Short: "Enroll this node with a join token: its key is made here, the controller signs its certificate",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// agent.yaml is run's file: enroll takes the keys it shares
			// (state-dir, controller) and leaves the others to run.
			var known runOptions
			runFlags := pflag.NewFlagSet("", pflag.ContinueOnError)
			known.define(runFlags)
			if err := daemonconfig.Load(configPath, cmd.Flags().Changed("config"), cmd.Flags(), func(k string) bool { return runFlags.Lookup(k) != nil }); err != nil {
				return daemonconfig.Usage(err)
			}
			for _, f := range []string{"controller", "token", "ca-pin"} {
				if v := cmd.Flags().Lookup(f).Value.String(); v == "" || v == "[]" {
					return daemonconfig.Usage(fmt.Errorf("enroll needs --%s (the line `ferryctl token create` prints has it)", f))
				}
			}
			if o.NodeID == "" {
				host, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("no --node-id given and the host name is unknown (%w); give --node-id", err)
				}
				o.NodeID = strings.ToLower(host)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			info, err := enroll.Enroll(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "enrolled node %s in group %s; start it with:\n  ferry-agent run --state-dir %s\n", info.NodeID, info.Group, o.StateDir)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", defaultConfig, "config file whose state-dir and controller are used unless given here")
	fs.StringSliceVar(&o.Controllers, "controller", nil, controllerUsage+"; enrollment goes through the first that answers, and run dials them all (required)")
	fs.StringVar(&o.Token, "token", "", "join token that 'ferryctl token create' printed (required)")
	fs.StringVar(&o.CAPin, "ca-pin", "", "`sha256:HEX` CA pin that 'ferryctl token create' printed (required)")
	fs.StringVar(&o.NodeID, "node-id", "", "node `ID`, lowercase (default: this host's name)")
	fs.StringVar(&o.StateDir, "state-dir", defaultStateDir, "where the agent keeps its identity and state")
	fs.Var(labelFlag(o.Labels), "label", "label key=value to ask for (repeatable); the join token must allow it")
	return cmd
}

func runCmd(args []string, stderr io.Writer, systemdRestart *bool) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run [flags]",
		Short: "Run the agent: keep a stream to the controller and install what rollouts send",
		Long: `Run the agent: keep a stream to the controller, heartbeat, and install what
rollouts send. SIGHUP rereads the config file and applies log-level and
reconnect-max at once; other changed keys are logged as needing a restart.
A second agent on the same state dir refuses to start, naming the first.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := daemonconfig.Load(o.configPath, cmd.Flags().Changed("config"), cmd.Flags(), nil); err != nil {
				return daemonconfig.Usage(err)
			}
			return runAgent(o, cmd.Flags(), args, stderr, systemdRestart)
		},
	}
	o.define(cmd.Flags())
	return cmd
}

func runAgent(o *runOptions, fs *pflag.FlagSet, args []string, stderr io.Writer, systemdRestart *bool) error {
	hup := daemonconfig.NotifyHUP()
	var level slog.LevelVar
	level.Set(o.level)
	cfg := o.cfg
	cfg.NoPeerExchange = !o.peerExchange
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: &level}))
	if exe, err := selfupdate.Executable(); err == nil {
		cfg.Executable = exe
	} else {
		cfg.Logger.Warn("cannot find the agent's own executable; agent_update steps will fail", "err", err)
	}
	if cfg.DriftInterval == 0 {
		cfg.DriftInterval = -1 // Config's "never"
	}
	a, err := agent.New(cfg)
	if err != nil {
		return restartIfRestored(cfg, err, systemdRestart)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &daemonconfig.Reloader[*runOptions]{
		Parse: func() (*runOptions, *pflag.FlagSet, error) { return parseRun(args) },
		Live:  liveKeys,
		Apply: func(next *runOptions, _ []daemonconfig.Change) error {
			level.Set(next.level)
			a.SetBackoffMax(next.cfg.BackoffMax)
			return nil
		},
		Running: fs,
		Logger:  cfg.Logger.With("node", a.NodeID()),
	}
	go hup.Serve(ctx, r.Reload)
	cfg.Logger.Info("ferry-agent starting", "version", version.Version, "node", a.NodeID(), "root", cfg.Root)
	err = a.Run(ctx)
	var re *agent.RestartError
	if errors.As(err, &re) {
		stop()
		return restart(cfg, re.Exe, re.Args, systemdRestart)
	}
	return err
}

// restartIfRestored restarts the previous agent when this one, on
// probation after an update, could not start; otherwise it returns err.
func restartIfRestored(cfg agent.Config, err error, systemdRestart *bool) error {
	// Only while no agent runs on the state dir: a second process started
	// by hand must not replace the binary under the one on probation. The
	// exec or the exit releases the lock.
	lock, lerr := dirlock.Acquire(cfg.StateDir, agent.LockFile)
	if lerr != nil {
		return err
	}
	defer func() { _ = lock.Release() }()
	m, ok := selfupdate.RestoreAfterFailedStart(cfg.StateDir, version.Version, err)
	if !ok {
		return err
	}
	cfg.Logger.Error("the new agent could not start; previous agent restored", "err", err)
	return restart(cfg, m.Exe, m.Args, systemdRestart)
}

// restart starts the binary at exe in place of this process: systemd
// does it when it runs the agent (the unit restarts on this exit status),
// an exec otherwise.
func restart(cfg agent.Config, exe string, args []string, systemdRestart *bool) error {
	if selfupdate.UnderSystemd() {
		cfg.Logger.Info("exiting for systemd to start the agent again", "exit_status", selfupdate.ExitRestart)
		*systemdRestart = true
		return errors.New("restarting as the new binary (systemd starts it again)")
	}
	cfg.Logger.Info("re-executing the agent", "exe", exe)
	return selfupdate.Exec(exe, args)
}
