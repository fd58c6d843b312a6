package cli

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
)

// watchCmd is the hidden command the previous agent starts before it
// restarts as a new binary: the watchdog that restores it when the new
// one dies or hangs before the controller welcomes it (package
// selfupdate, watch.go).
func watchCmd(stderr io.Writer) *cobra.Command {
	w := selfupdate.Watch{AgentLock: agent.LockFile}
	var detach bool
	var unit string
	cmd := &cobra.Command{
		Use:    selfupdate.WatchCommand + " --state-dir DIR --job ID [--pid PID]",
		Short:  "Watch a new agent on probation and restore the previous one if it fails (started by the agent itself)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(*cobra.Command, []string) error {
			if detach {
				args := []string{selfupdate.WatchCommand, "--state-dir", w.StateDir, "--job", w.JobID}
				if w.PID > 0 {
					args = append(args, "--pid", strconv.Itoa(w.PID))
				}
				return selfupdate.Detach(args)
			}
			w.Logger = slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "update-watchdog")
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			switch {
			case w.PID > 0:
				w.Start = func(m *selfupdate.Marker) error { return selfupdate.Exec(m.Exe, m.Args) }
			case unit != "":
				w.Start = func(*selfupdate.Marker) error { return selfupdate.StartUnit(ctx, unit) }
			}
			return w.Run(ctx)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&w.StateDir, "state-dir", defaultStateDir, "the agent's state dir, which holds the update marker")
	fs.StringVar(&w.JobID, "job", "", "the agent update job on probation")
	fs.IntVar(&w.PID, "pid", 0, "the agent's pid (restart by re-exec); 0 under systemd")
	fs.StringVar(&unit, "unit", "", "under systemd: the agent's unit, started again after a restore if its restarts stopped")
	fs.BoolVar(&detach, "detach", false, "start the watchdog in a session of its own and return")
	_ = cmd.MarkFlagRequired("job")
	return cmd
}
