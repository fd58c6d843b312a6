package daemonconfig

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/spf13/pflag"
)

// A Change is a setting whose value differs between two flag sets.
type Change struct {
	Key, Old, New string
}

func (c Change) String() string {
	return fmt.Sprintf("%s: %s -> %s", c.Key, quote(c.Old), quote(c.New))
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// Changes lists the settings of next whose values differ from running,
// in flag order. Both flag sets must come from the same definitions.
func Changes(running, next *pflag.FlagSet) []Change {
	var out []Change
	running.VisitAll(func(fl *pflag.Flag) {
		if CommandLineOnly(fl) {
			return
		}
		n := next.Lookup(fl.Name)
		if n == nil {
			return
		}
		if o, v := fl.Value.String(), n.Value.String(); o != v {
			out = append(out, Change{Key: fl.Name, Old: o, New: v})
		}
	})
	return out
}

// Reloader rereads a daemon's settings on demand (SIGHUP) and applies
// those that can change while it runs; T is the daemon's parsed settings.
type Reloader[T any] struct {
	// Parse builds the settings afresh: the command line again, then the
	// config file under it, exactly as at start.
	Parse func() (T, *pflag.FlagSet, error)
	// Live lists the keys Apply can change at run time.
	Live []string
	// Apply makes the changed live keys of next effective.
	Apply func(next T, changed []Change) error
	// Running is the flag set the daemon started with; Reload updates
	// its live values, so the next reload compares with what runs.
	Running *pflag.FlagSet
	Logger  *slog.Logger
}

// Reload rereads the settings and applies what changed. A file that does
// not parse changes nothing. A change to a key that needs a restart is
// logged as a warning naming the key and keeps its running value. It
// returns the changes applied and those that wait for a restart.
func (r *Reloader[T]) Reload() (applied, needRestart []Change, err error) {
	next, fs, err := r.Parse()
	if err != nil {
		r.Logger.Error("config not reloaded; the running settings stay", "err", err)
		return nil, nil, err
	}
	for _, c := range Changes(r.Running, fs) {
		if slices.Contains(r.Live, c.Key) {
			applied = append(applied, c)
		} else {
			needRestart = append(needRestart, c)
		}
	}
	if len(applied) > 0 {
		if err := r.Apply(next, applied); err != nil {
			r.Logger.Error("config not reloaded; the running settings stay", "err", err)
			return nil, nil, err
		}
		for _, c := range applied {
			if err := r.Running.Lookup(c.Key).Value.Set(c.New); err != nil {
				return nil, nil, fmt.Errorf("record reloaded %s: %w", c.Key, err) // a live key's String does not parse: a programming error
			}
			r.Logger.Info("config reloaded: setting changed", "key", c.Key, "old", c.Old, "new", c.New)
		}
	}
	for _, c := range needRestart {
		r.Logger.Warn("config changed but this setting needs a restart; the running value stays until then", "key", c.Key, "running", c.Old, "file", c.New)
	}
	if len(applied) == 0 && len(needRestart) == 0 {
		r.Logger.Info("config reloaded: nothing changed")
	}
	return applied, needRestart, nil
}

// HUP catches SIGHUP for a reload from the moment NotifyHUP returns, so a
// signal that comes while the daemon starts is kept, not fatal.
type HUP struct{ ch chan os.Signal }

// NotifyHUP starts catching SIGHUP.
func NotifyHUP() *HUP {
	h := &HUP{ch: make(chan os.Signal, 1)}
	signal.Notify(h.ch, syscall.SIGHUP)
	return h
}

// Serve calls reload on every SIGHUP (one pending at most) until ctx
// ends. SIGHUP stays caught after that, and is dropped: a reload sent
// while the daemon stops must not kill it before it has said goodbye.
func (h *HUP) Serve(ctx context.Context, reload func() (applied, needRestart []Change, err error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.ch:
			_, _, _ = reload() // reload logs what it did, or why not
		}
	}
}
