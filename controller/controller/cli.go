package controller

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/version"
)

const defaultDataDir = "/var/lib/ferry-controller"

// Main is the ferry-controller command line; it returns the exit code.
// Without a command it runs the controller; `backup` and `restore` copy
// its store (backup.go).
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "backup":
			return backupMain(args[1:], stdout, stderr)
		case "restore":
			return restoreMain(args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("ferry-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage:\n  ferry-controller [flags]                            run the controller\n  ferry-controller backup --data-dir D --out FILE     copy the store, also while it runs\n  ferry-controller restore --data-dir D --from FILE   replace the stopped controller's store with a backup\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var cfg Config
	var names, level string
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.StringVar(&cfg.DataDir, "data-dir", defaultDataDir, "state directory: store, CA, certificates, artifacts")
	fs.StringVar(&cfg.GRPCAddr, "listen", ":7443", "gRPC (mTLS) listen address")
	fs.StringVar(&cfg.HTTPAddr, "http-listen", "127.0.0.1:7080", "HTTP listen address for /metrics, /healthz, /readyz")
	fs.StringVar(&cfg.AdvertiseAddress, "advertise", "", "HOST:PORT agents and ferryctl dial (default: host name and the gRPC port)")
	fs.StringVar(&names, "server-names", "", "extra comma-separated DNS names or IPs for the serving certificate")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 0, "heartbeat interval agents are told to use (default 5s)")
	fs.DurationVar(&cfg.AgentCertTTL, "agent-cert-ttl", 0, "agent certificate lifetime (default 720h; agents renew at two thirds)")
	fs.IntVar(&cfg.MaxDownloads, "max-downloads", 0, "artifact downloads streamed at once; more agents wait their turn (default 8)")
	fs.IntVar(&cfg.MaxNodeDownloads, "max-downloads-per-node", 0, "artifact downloads one node may stream or wait for at once; more are refused (default 2)")
	fs.DurationVar(&cfg.DownloadStall, "download-stall-timeout", 0, "end a download whose agent has taken no data for this long, so its slot serves others; the agent resumes later (default 15s)")
	fs.StringVar(&cfg.GossipAddr, "gossip-listen", ":7946", `gossip (memberlist) bind address; "" disables gossip`)
	fs.StringVar(&cfg.GossipAdvertise, "gossip-advertise", "", "gossip address agents dial (default: the bound address)")
	fs.StringVar(&cfg.GossipProfile, "gossip-profile", "lan", "gossip timings: lan, local or wan")
	fs.DurationVar(&cfg.GossipKeyGrace, "gossip-key-grace", 0, "how long after a rotation the previous gossip key (e.g. a removed node's) still works, so agents switch without dropping out (default 30s)")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	fs.Var(sizeFlag{&cfg.Logs.MaxJobBytes}, "log-max-per-job", "job output kept per node and job: its first quarter and its newest lines, with a marker of what was cut between (default 256KiB)")
	fs.DurationVar(&cfg.Logs.MaxAge, "log-max-age", 0, "delete a job's output this long after its last line (default 720h)")
	fs.Var(totalFlag{&cfg.Logs.MaxTotalBytes}, "log-max-total", "job output kept in all; past it the oldest jobs' output is deleted (default 1GiB)")
	fs.BoolVar(&cfg.AllowNewStore, "new-store", false, "start with a new, empty store when ferry.db is missing or empty although the data dir holds a CA, admin credential or artifacts (every node must enroll again); without it that is an error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.String("ferry-controller"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ferry-controller takes no arguments but the commands backup and restore, got %q\n", fs.Args())
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "ferry-controller: --log-level %q: %v\n", level, err)
		return 2
	}
	if names != "" {
		cfg.ServerNames = strings.Split(names, ",")
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	c, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ferry-controller: %v\n", err)
		return 1
	}
	gossipAddr := "off"
	if a := c.GossipAddr(); a != "" {
		gossipAddr = a
	}
	fmt.Fprintf(stdout, "ferry-controller %s\n  gRPC:             %s (advertised as %s)\n  HTTP:             %s\n  gossip:           %s\n  CA pin:           %s\n  admin credential: %s\n",
		version.Version, c.GRPCAddr(), c.AdvertiseAddress(), c.HTTPAddr(), gossipAddr, c.CAPin(), c.AdminCredentialPath())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := c.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "ferry-controller: %v\n", err)
		return 1
	}
	return 0
}

// sizeFlag and totalFlag read a byte count with an optional unit (256KiB).
type sizeFlag struct{ v *int }

func (f sizeFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.Itoa(*f.v)
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

type totalFlag struct{ v *uint64 }

func (f totalFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.FormatUint(*f.v, 10)
}

func (f totalFlag) Set(s string) (err error) {
	*f.v, err = bytesize.Parse(s)
	return err
}
