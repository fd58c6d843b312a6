// Package cli is the ferry-agent command line: enroll, run, version.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/version"
)

const usage = `ferry-agent runs on every node: it enrolls once, then keeps a stream to the
Ferry controller, heartbeats, and installs what rollouts send it.

Usage:
  ferry-agent enroll --controller HOST:PORT --token T --ca-pin sha256:HEX [--node-id ID] [--state-dir DIR] [--label k=v ...]
  ferry-agent run [--state-dir DIR] [--root DIR] [--gossip-listen HOST:PORT]
  ferry-agent version

Run "ferry-agent COMMAND -h" for a command's flags.
`

// defaultStateDir is the one package apply refuses steps to write in by
// name; the agent refuses its actual --state-dir too.
const defaultStateDir = installpolicy.DefaultStateDir

// Main runs the command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "enroll":
		err = runEnroll(args[1:], stdout, stderr)
	case "run":
		err = runAgent(args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version.String("ferry-agent"))
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ferry-agent: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "ferry-agent: %v\n", err)
		return 1
	}
	return 0
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

func runEnroll(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferry-agent enroll", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	o := enroll.Options{Labels: map[string]string{}}
	fs.StringVar(&o.Controller, "controller", "", "controller gRPC address, HOST:PORT (required)")
	fs.StringVar(&o.Token, "token", "", "join token that 'ferryctl token create' printed (required)")
	fs.StringVar(&o.CAPin, "ca-pin", "", "`sha256:HEX` CA pin that 'ferryctl token create' printed (required)")
	fs.StringVar(&o.NodeID, "node-id", strings.ToLower(host), "node `ID`, lowercase (the host name when not given)")
	fs.StringVar(&o.StateDir, "state-dir", defaultStateDir, "where the agent keeps its identity and state")
	fs.Var(labelFlag(o.Labels), "label", "label key=value to ask for (repeatable); the join token must allow it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("enroll takes no arguments, got %q", fs.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	info, err := enroll.Enroll(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled node %s in group %s; start it with:\n  ferry-agent run --state-dir %s\n", info.NodeID, info.Group, o.StateDir)
	return nil
}

func runAgent(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferry-agent run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := agent.Config{}
	fs.StringVar(&cfg.StateDir, "state-dir", defaultStateDir, "where the agent keeps its identity and state")
	fs.StringVar(&cfg.Root, "root", "/", "install root every package path resolves under")
	fs.StringVar(&cfg.Controller, "controller", "", "controller address (default: the one used at enrollment)")
	fs.DurationVar(&cfg.BackoffMax, "reconnect-max", 30*time.Second, "longest delay between reconnect attempts")
	fs.StringVar(&cfg.Gossip.Addr, "gossip-listen", ":7946", `gossip (memberlist) bind address; "" disables gossip`)
	fs.StringVar(&cfg.Gossip.AdvertiseAddr, "gossip-advertise", "", "gossip address peers dial (default: the bound address)")
	fs.StringVar(&cfg.Gossip.Profile, "gossip-profile", "lan", "gossip timings: lan, local or wan")
	fs.StringVar(&cfg.MetricsAddr, "metrics-listen", "", `serve the agent's /metrics on this address, e.g. 127.0.0.1:9481 ("" = off)`)
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", *level, err)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Logger.Info("ferry-agent starting", "version", version.Version, "node", a.NodeID(), "root", cfg.Root)
	return a.Run(ctx)
}
