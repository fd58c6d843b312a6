package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/daemonconfig"
	"github.com/ferrydeploy/ferry/shared/version"
)

const (
	defaultDataDir = "/var/lib/ferry-controller"
	defaultConfig  = "/etc/ferry/controller.yaml"
)

// liveKeys are the settings a reload (SIGHUP) applies while the
// controller runs; every other key needs a restart.
var liveKeys = []string{"log-level", "heartbeat-interval", "max-downloads", "max-downloads-per-node", "download-stall-timeout"}

// Main is the ferry-controller command line; it returns the exit code.
// Without a command it runs the controller; `backup` and `restore` copy
// its store (backup.go).
func Main(args []string, stdout, stderr io.Writer) int {
	return daemonconfig.Execute(rootCmd(args, stdout, stderr), "ferry-controller", args, stdout, stderr)
}

// options is what the root command's flags and the config file set.
type options struct {
	cfg          Config
	names        []string
	peerExchange bool
	level        slog.Level
	configPath   string
}

// define binds every flag of the controller to o. A flag is a key of
// controller.yaml by the same name (deployments/config/controller.yaml
// documents each).
func (o *options) define(fs *pflag.FlagSet) {
	fs.StringVar(&o.configPath, "config", defaultConfig, "config file; its keys are these flags, which override it (a missing default file is no error)")
	fs.StringVar(&o.cfg.DataDir, "data-dir", defaultDataDir, "state directory: store, CA, certificates, artifacts")
	fs.StringVar(&o.cfg.GRPCAddr, "listen", ":7443", "gRPC (mTLS) listen address")
	fs.StringVar(&o.cfg.HTTPAddr, "http-listen", "127.0.0.1:7080", "HTTP listen address for /metrics, /healthz, /readyz")
	fs.StringVar(&o.cfg.AdvertiseAddress, "advertise", "", "HOST:PORT agents and ferryctl dial (default: host name and the gRPC port)")
	fs.StringSliceVar(&o.names, "server-names", nil, "extra comma-separated DNS names or IPs for the serving certificate")
	fs.DurationVar(&o.cfg.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "heartbeat interval agents are told to use (live on reload)")
	fs.DurationVar(&o.cfg.AgentCertTTL, "agent-cert-ttl", 30*24*time.Hour, "agent certificate lifetime; agents renew at two thirds")
	fs.IntVar(&o.cfg.MaxDownloads, "max-downloads", artifact.DefaultMaxDownloads, "artifact downloads streamed at once; more agents wait their turn (live on reload)")
	fs.IntVar(&o.cfg.MaxNodeDownloads, "max-downloads-per-node", artifact.DefaultMaxDownloadsPerNode, "artifact downloads one node may stream or wait for at once; more are refused (live on reload)")
	fs.DurationVar(&o.cfg.DownloadStall, "download-stall-timeout", artifact.DefaultStallTimeout, "end a download whose agent has taken no data for this long, so its slot serves others; the agent resumes later (live on reload)")
	daemonconfig.GossipFlags(fs, &o.cfg.GossipAddr, &o.cfg.GossipAdvertise, &o.cfg.GossipProfile, "agents")
	fs.DurationVar(&o.cfg.GossipKeyGrace, "gossip-key-grace", defaultGossipKeyGrace, "how long after a rotation the previous gossip key (e.g. a removed node's) still works, so agents switch without dropping out")
	o.cfg.Logs.MaxJobBytes = store.DefaultMaxJobLog
	fs.Var(sizeFlag{&o.cfg.Logs.MaxJobBytes}, "log-max-per-job", "job output kept per node and job: its first quarter and its newest lines, with a marker of what was cut between")
	fs.DurationVar(&o.cfg.Logs.MaxAge, "log-max-age", DefaultLogMaxAge, "delete a job's output this long after its last line")
	o.cfg.Logs.MaxTotalBytes = DefaultLogMaxTotalBytes
	fs.Var(totalFlag{&o.cfg.Logs.MaxTotalBytes}, "log-max-total", "job output kept in all; past it the oldest jobs' output is deleted")
	fs.BoolVar(&o.peerExchange, "peer-exchange", true, "let agents fetch artifact pieces from each other (those started with --peer-listen), the controller serving each piece about once per rollout; false: every agent downloads from the controller, for sites that forbid node-to-node traffic")
	fs.StringArrayVar(&o.cfg.ImportDirs, "import-dir", nil, "a directory (e.g. a mounted NFS share) `ferryctl artifact import` may read files below; repeat for several (default: none, path imports are refused)")
	o.level = slog.LevelInfo
	fs.Var(daemonconfig.LevelValue{L: &o.level}, "log-level", "log level: debug, info, warn, error (live on reload)")
	storeFlags(fs, &o.cfg.Store)
	fs.StringVar(&o.cfg.ControllerID, "controller-id", "", "with --store etcd: this controller's ID among the controllers sharing the store, unique (default: the host name)")
	fs.BoolVar(&o.cfg.Join, "join", false, "with --store etcd: join the controllers already on the etcd store; the data dir holds the installation's CA (ca.crt, ca.key, gossip.key) copied from another controller's")
	fs.BoolVar(&o.cfg.AllowNewStore, "new-store", false, "start with a new, empty store when ferry.db is missing or empty although the data dir holds a CA, admin credential or artifacts (every node must enroll again); without it that is an error; command line only")
	daemonconfig.MarkCommandLineOnly(fs, "new-store")
}

// loadConfig applies the config file under the flags already parsed.
func (o *options) loadConfig(fs *pflag.FlagSet) error {
	if err := daemonconfig.Load(o.configPath, fs.Changed("config"), fs, nil); err != nil {
		return daemonconfig.Usage(err)
	}
	o.cfg.ServerNames = o.names
	o.cfg.PeerExchangeOff = !o.peerExchange
	if o.cfg.Store.Backend == StoreEtcd && !fs.Changed("log-max-total") {
		o.cfg.Logs.MaxTotalBytes = DefaultEtcdLogMaxTotalBytes
	}
	return nil
}

// parseOptions reads the settings as at start: the command line, then
// the config file under it. A reload calls it again.
func parseOptions(args []string) (*options, *pflag.FlagSet, error) {
	o := &options{}
	fs := pflag.NewFlagSet("ferry-controller", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.define(fs)
	fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if err := o.loadConfig(fs); err != nil {
		return nil, nil, err
	}
	return o, fs, nil
}

func rootCmd(args []string, stdout, stderr io.Writer) *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "ferry-controller",
		Short: "ferry-controller is the Ferry control plane: gRPC API over mTLS, CA, rollouts, health view, /metrics",
		Long: `ferry-controller is the Ferry control plane: the gRPC API over mTLS that
agents and ferryctl use, the CA, the rollout engine, the health view and
/metrics. Without a command it runs the controller.

Settings come from the flags below and from the config file (--config,
default /etc/ferry/controller.yaml), whose keys are the flags' names; a flag
given on the command line overrides the file. SIGHUP rereads the file and
applies log-level, heartbeat-interval, max-downloads, max-downloads-per-node
and download-stall-timeout at once; other changed keys are logged as needing
a restart.`,
		Args: func(_ *cobra.Command, a []string) error {
			if len(a) > 0 {
				return daemonconfig.Usage(fmt.Errorf("takes no arguments but the commands backup, restore, migrate and version, got %q", a))
			}
			return nil
		},
		Version: version.String("ferry-controller"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.loadConfig(cmd.Flags()); err != nil {
				return err
			}
			return run(o, cmd.Flags(), args, stdout, stderr)
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	o.define(root.Flags())
	root.AddCommand(backupCmd(stdout), restoreCmd(stdout), migrateCmd(stdout), versionCmd(stdout))
	return root
}

func versionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the ferry-controller version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(stdout, version.String("ferry-controller")) },
	}
}

// run starts the controller and serves until SIGINT or SIGTERM; SIGHUP
// reloads the config file.
func run(o *options, fs *pflag.FlagSet, args []string, stdout, stderr io.Writer) error {
	hup := daemonconfig.NotifyHUP()
	var level slog.LevelVar
	level.Set(o.level)
	cfg := o.cfg
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: &level}))
	c, err := New(cfg)
	if err != nil {
		return err
	}
	gossipAddr := "off"
	if a := c.GossipAddr(); a != "" {
		gossipAddr = a
	}
	fmt.Fprintf(stdout, "ferry-controller %s\n  gRPC:             %s (advertised as %s)\n  HTTP:             %s\n  gossip:           %s\n  CA pin:           %s\n  admin credential: %s\n",
		version.Version, c.GRPCAddr(), c.AdvertiseAddress(), c.HTTPAddr(), gossipAddr, c.CAPin(), c.AdminCredentialPath())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &daemonconfig.Reloader[*options]{
		Parse: func() (*options, *pflag.FlagSet, error) { return parseOptions(args) },
		Live:  liveKeys,
		Apply: func(next *options, _ []daemonconfig.Change) error {
			level.Set(next.level)
			c.SetHeartbeatInterval(next.cfg.HeartbeatInterval)
			c.SetDownloadLimits(next.cfg.MaxDownloads, next.cfg.MaxNodeDownloads, next.cfg.DownloadStall)
			return nil
		},
		Running: fs,
		Logger:  cfg.Logger,
	}
	go hup.Serve(ctx, r.Reload)
	return c.Run(ctx)
}

// sizeFlag and totalFlag read a byte count with an optional unit (256KiB)
// and print it in the largest binary unit that divides it, so a value
// reads back as it was given.
type sizeFlag struct{ v *int }

func (f sizeFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return sizeString(uint64(*f.v)) //nolint:gosec // Set keeps it within 0..1GiB
}

func (f sizeFlag) Set(s string) error {
	n, err := bytesize.Parse(s)
	if err != nil {
		return err
	}
	if n > 1<<30 {
		return fmt.Errorf("%s is more than 1GiB", s)
	}
	*f.v = int(n)
	return nil
}

func (sizeFlag) Type() string { return "size" }

type totalFlag struct{ v *uint64 }

func (f totalFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return sizeString(*f.v)
}

func (f totalFlag) Set(s string) (err error) {
	*f.v, err = bytesize.Parse(s)
	return err
}

func (totalFlag) Type() string { return "size" }

func sizeString(n uint64) string {
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatUint(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}
