package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/agent/internal/doctor"
	"github.com/ferrydeploy/ferry/agent/internal/install"
)

// doctorCmd is `ferry-agent doctor`: the checks are package doctor's.
func doctorCmd(stdout io.Writer) *cobra.Command {
	cfg := doctor.Config{}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this node as an operator would after an install: certificate, controller, clock, gossip, disk, installed files, visudo",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if n := doctor.Run(ctx, cfg, stdout); n > 0 {
				return fmt.Errorf("doctor found %d problems; each PROBLEM line above says how to fix it", n)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.StateDir, "state-dir", defaultStateDir, "the agent's state dir")
	fs.StringVar(&cfg.Root, "root", "/", "the agent's install root")
	fs.StringSliceVar(&cfg.Controllers, "controller", nil, controllerUsage+" (default: the ones given at enrollment); each is checked")
	fs.BoolVar(&cfg.Full, "full", false, "hash every installed file (default: sizes, modes and times)")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "how long to wait for the controller")
	fs.StringVar(&cfg.Visudo, "visudo", "", "path of visudo (default: looked up)")
	return cmd
}

// verifyCmd is `ferry-agent verify`: the installed trees against their
// manifests, read-only.
func verifyCmd(stdout io.Writer) *cobra.Command {
	var stateDir, root string
	var full bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the installed files against what Ferry installed (--full hashes them)",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			return verify(stdout, root, stateDir, full)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&stateDir, "state-dir", defaultStateDir, "the agent's state dir")
	fs.StringVar(&root, "root", "/", "the agent's install root")
	fs.BoolVar(&full, "full", false, "hash every installed file (default: sizes, modes and times)")
	return cmd
}

func verify(stdout io.Writer, root, stateDir string, full bool) error {
	ro, err := install.ReadOnly(root, stateDir)
	if err != nil {
		return err
	}
	rep, err := ro.CheckDrift(full)
	if err != nil {
		return err
	}
	how := "sizes, modes and times"
	if full {
		how = "full: every file hashed"
	}
	if len(rep.GetPackages()) == 0 {
		fmt.Fprintf(stdout, "packages checked: %d (%s); all match what Ferry installed\n", rep.GetChecked(), how)
		return nil
	}
	fmt.Fprintf(stdout, "packages checked: %d (%s); these differ from what Ferry installed:\n", rep.GetChecked(), how)
	for _, p := range rep.GetPackages() {
		fmt.Fprintf(stdout, "  %s %s: %d entries differ\n", p.GetName(), p.GetVersion(), p.GetChanged())
		for _, e := range p.GetExamples() {
			fmt.Fprintf(stdout, "    %s\n", e)
		}
	}
	return fmt.Errorf("drift in %d packages; roll the same version out again to repair one: ferryctl rollout --group GROUP --package NAME@VERSION", len(rep.GetPackages()))
}
