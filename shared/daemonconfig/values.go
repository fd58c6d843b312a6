package daemonconfig

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/shared/gossip"
)

// LevelValue is a log-level flag: debug, info, warn or error.
type LevelValue struct{ L *slog.Level }

func (v LevelValue) String() string {
	if v.L == nil {
		return "info"
	}
	return strings.ToLower(v.L.String())
}

func (v LevelValue) Set(s string) error {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug":
		l = slog.LevelDebug
	case "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return fmt.Errorf("%q is not a log level; use debug, info, warn or error", s)
	}
	*v.L = l
	return nil
}

func (LevelValue) Type() string { return "level" }

// ChoiceValue is a string flag that takes one of a few words.
type ChoiceValue struct {
	S       *string
	Choices []string
}

func (v ChoiceValue) String() string {
	if v.S == nil {
		return ""
	}
	return *v.S
}

func (v ChoiceValue) Set(s string) error {
	if !slices.Contains(v.Choices, s) {
		return fmt.Errorf("%q is not one of %s", s, strings.Join(v.Choices, ", "))
	}
	*v.S = s
	return nil
}

func (ChoiceValue) Type() string { return "string" }

// GossipFlags defines gossip-listen, gossip-advertise and gossip-profile,
// the gossip settings both daemons take; dialers names who dials the
// advertised address ("agents", "peers").
func GossipFlags(fs *pflag.FlagSet, addr, advertise, profile *string, dialers string) {
	fs.StringVar(addr, "gossip-listen", ":7946", `gossip (memberlist) bind address; "" disables gossip`)
	fs.StringVar(advertise, "gossip-advertise", "", "gossip address "+dialers+" dial (default: the bound address)")
	*profile = gossip.ProfileLAN
	fs.Var(ChoiceValue{S: profile, Choices: []string{gossip.ProfileLAN, gossip.ProfileLocal, gossip.ProfileWAN}}, "gossip-profile", "gossip timings: lan, local or wan")
}
