// Package doctor runs the checks an operator does by hand on a node after
// installing ferry-agent (ferry-agent doctor): the certificate, the
// controller over mTLS, the running agent's stream, clock and gossip view
// (from its status.json), free disk, installed files against their
// manifests, and visudo. Each check prints one line, "ok" or a problem
// with its fix; any problem makes the command fail.
//
// It only reads: it opens the install records read-only and asks the
// controller nothing that changes state (it opens an agent stream and
// closes it before the hello, which the controller refuses without
// attaching the node, after authenticating it), so it is safe beside the
// running agent.
package doctor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	"github.com/ferrydeploy/ferry/agent/internal/controllers"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	"github.com/ferrydeploy/ferry/agent/internal/identity"
	"github.com/ferrydeploy/ferry/agent/internal/install"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/approxdur"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sudoers"
)

// Config says what to check.
type Config struct {
	StateDir string
	Root     string
	// Controllers override the addresses recorded at enrollment; each is
	// checked.
	Controllers []string
	// Full hashes every installed file (default: sizes, modes and times).
	Full bool
	// Timeout bounds the controller check (default 10s).
	Timeout time.Duration
	// Visudo is visudo's path; "" looks it up.
	Visudo string
	// MinFree is the free space below which a file system is a problem
	// (default 1 GiB, or 5% of a smaller file system).
	MinFree uint64
	Now     func() time.Time
}

// Thresholds.
const (
	// maxSkew is the clock skew doctor calls a problem.
	maxSkew = 30 * time.Second
	// staleStatus is how old status.json may be before the agent counts
	// as not running.
	staleStatus = 2 * time.Minute
)

// Result is one check's outcome.
type Result struct {
	Check  string
	OK     bool
	Detail string
	Fix    string // problems only
}

// Run runs every check, writes one line each to w, and returns the number
// of problems.
func Run(ctx context.Context, cfg Config, w io.Writer) int {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	var results []Result
	id, err := identity.Load(cfg.StateDir)
	switch {
	case !identity.Exists(cfg.StateDir):
		results = append(results, Result{Check: "identity", Detail: "this node is not enrolled: " + cfg.StateDir + " holds no identity",
			Fix: "enroll it: ferry-agent enroll --controller HOST:PORT --token T --ca-pin sha256:HEX --state-dir " + cfg.StateDir})
	case err != nil:
		results = append(results, Result{Check: "identity", Detail: err.Error(), Fix: "see the message; re-enrolling (remove " + cfg.StateDir + ", ferry-agent enroll) gives a new identity"})
	default:
		st, stErr := agentstatus.Read(cfg.StateDir)
		if st != nil {
			id.SetSkew(st.ClockSkew, cfg.Now())
		}
		results = append(results, checkCertificate(cfg, id))
		results = append(results, checkControllers(ctx, cfg, id)...)
		results = append(results, checkDaemon(cfg, st, stErr))
		if st != nil && cfg.Now().Sub(st.WrittenAt) < staleStatus {
			results = append(results, checkClock(st), checkGossip(st))
		}
	}
	ro, err := install.ReadOnly(cfg.Root, cfg.StateDir)
	if err != nil {
		results = append(results, Result{Check: "installed packages", Detail: err.Error(), Fix: "see the message; the agent's install records are in " + cfg.StateDir + "/install"})
	} else {
		results = append(results, checkDisks(cfg, ro.Destinations())...)
		results = append(results, checkDrift(cfg, ro))
	}
	results = append(results, checkVisudo(cfg))

	problems := 0
	for _, r := range results {
		if r.OK {
			fmt.Fprintf(w, "ok       %s: %s\n", r.Check, r.Detail)
			continue
		}
		problems++
		fmt.Fprintf(w, "PROBLEM  %s: %s\n         fix: %s\n", r.Check, r.Detail, r.Fix)
	}
	if problems == 0 {
		fmt.Fprintf(w, "all %d checks passed\n", len(results))
	} else {
		fmt.Fprintf(w, "%d of %d checks found a problem\n", problems, len(results))
	}
	return problems
}

func checkCertificate(cfg Config, id *identity.Identity) Result {
	r := Result{Check: "certificate"}
	leaf := id.Certificate().Leaf
	now := id.ControllerTime(cfg.Now())
	left := leaf.NotAfter.Sub(now)
	switch {
	case now.Before(leaf.NotBefore):
		r.Detail = fmt.Sprintf("not valid before %s, and this node's clock says %s", leaf.NotBefore.UTC().Format(time.RFC3339), cfg.Now().UTC().Format(time.RFC3339))
		r.Fix = "fix the clock: " + identity.NTPAdvice
	case left <= 0:
		r.Detail = fmt.Sprintf("expired %s ago (%s)", approxdur.String(-left), leaf.NotAfter.UTC().Format(time.RFC3339))
		r.Fix = fmt.Sprintf("re-enroll: ferryctl token create --group %s, remove %s, then ferry-agent enroll", id.Info.Group, cfg.StateDir)
	case id.RenewIn(cfg.Now()) < -time.Hour:
		r.Detail = fmt.Sprintf("valid until %s (%s left), but its renewal is %s overdue", leaf.NotAfter.UTC().Format(time.RFC3339), approxdur.String(left), approxdur.String(-id.RenewIn(cfg.Now())))
		r.Fix = "the agent renews over its stream: check that ferry-agent is running and reaches the controller (see the lines below)"
	default:
		r.OK = true
		r.Detail = fmt.Sprintf("node %s, valid until %s (%s left; renews from %s)", id.Info.NodeID, leaf.NotAfter.UTC().Format(time.RFC3339), approxdur.String(left), id.RenewAt().UTC().Format(time.RFC3339))
	}
	return r
}

// checkControllers checks each configured controller address (a name
// that resolves to several addresses is checked as the agent's first
// attempt would dial it).
func checkControllers(ctx context.Context, cfg Config, id *identity.Identity) []Result {
	addrs := cfg.Controllers
	if len(addrs) == 0 {
		addrs = id.Info.ControllerList()
	}
	addrs, err := controllers.Parse(addrs)
	if err != nil {
		return []Result{{Check: "controller", Detail: err.Error(), Fix: "give --controller HOST:PORT, or enroll the node again (" + cfg.StateDir + "/identity.json records no controller)"}}
	}
	out := make([]Result, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, checkController(ctx, cfg, id, a))
	}
	return out
}

// checkController opens an agent stream with the node's certificate and
// closes it without a hello: the controller authenticates the node and
// then refuses the stream (InvalidArgument or Unknown), which is the
// answer that proves both ends accept each other.
func checkController(ctx context.Context, cfg Config, id *identity.Identity, addr string) Result {
	r := Result{Check: "controller " + addr}
	tlsConf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return id.Certificate(), nil }, id.Pool())
	tlsConf.Time = func() time.Time { return id.ControllerTime(time.Now()) }
	conn, err := grpc.NewClient(addr, rpc.DialOptions(tlsConf)...)
	if err != nil {
		r.Detail, r.Fix = "cannot dial: "+err.Error(), "check the address (ferry-agent run --controller, or the one recorded at enrollment in "+cfg.StateDir+"/identity.json)"
		return r
	}
	defer func() { _ = conn.Close() }()
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	stream, err := ferryv1.NewAgentServiceClient(conn).Connect(cctx)
	if err == nil {
		_ = stream.CloseSend()
		_, err = stream.Recv()
	}
	code := status.Code(err)
	switch {
	case code == codes.InvalidArgument || code == codes.Unknown || errors.Is(err, io.EOF):
		r.OK, r.Detail = true, "reachable over mTLS; it accepts this node's certificate"
	case code == codes.Unauthenticated || code == codes.PermissionDenied:
		r.Detail = "the controller refuses this node: " + status.Convert(err).Message()
		r.Fix = "if the node was removed, re-enroll it with a new token (ferryctl token create), after removing " + cfg.StateDir
	case cctx.Err() != nil:
		r.Detail = fmt.Sprintf("no answer within %v", cfg.Timeout)
		r.Fix = "check that the controller runs and that this node reaches " + addr + " (firewall, DNS, routes)"
	case code == codes.Unavailable:
		r.Detail = "nothing answers there (connection refused, no route, or a TLS handshake that failed)"
		r.Fix = "check that the controller runs and that this node reaches " + addr + " (firewall, DNS, routes)"
	default:
		r.Detail = "unreachable: " + status.Convert(err).Message()
		r.Fix = "check that the controller runs and that this node reaches " + addr + " (firewall, DNS, routes)"
	}
	return r
}

func checkDaemon(cfg Config, st *agentstatus.Status, err error) Result {
	r := Result{Check: "agent"}
	fix := "start it: systemctl start ferry-agent (or ferry-agent run --state-dir " + cfg.StateDir + "), then look at journalctl -u ferry-agent"
	switch {
	case errors.Is(err, agentstatus.ErrNone):
		r.Detail, r.Fix = "has not run with this state dir (no status.json)", fix
	case err != nil:
		r.Detail, r.Fix = err.Error(), fix
	case cfg.Now().Sub(st.WrittenAt) > staleStatus:
		r.Detail, r.Fix = fmt.Sprintf("not running: its status was last written %s ago", approxdur.String(cfg.Now().Sub(st.WrittenAt))), fix
	case !st.Connected && len(st.Controllers) > 1:
		r.Detail = fmt.Sprintf("running, but not connected to any of its controllers (%s); it is trying %s", strings.Join(st.Controllers, ", "), st.Controller)
		r.Fix = "see journalctl -u ferry-agent for why; the controller lines above say which are reachable"
	case !st.Connected:
		r.Detail = "running, but its stream to " + st.Controller + " is down"
		r.Fix = "see journalctl -u ferry-agent for why; the controller line above says whether it is reachable"
	case len(st.Controllers) > 1:
		r.OK, r.Detail = true, fmt.Sprintf("running, connected to %s since %s (controllers: %s)", st.Controller, st.LastWelcome.Format(time.RFC3339), strings.Join(st.Controllers, ", "))
	default:
		r.OK, r.Detail = true, fmt.Sprintf("running, connected to %s since %s", st.Controller, st.LastWelcome.Format(time.RFC3339))
	}
	return r
}

func checkClock(st *agentstatus.Status) Result {
	r := Result{Check: "clock"}
	if st.ClockSkew.Abs() > maxSkew {
		ahead := "behind"
		if st.ClockSkew < 0 {
			ahead = "ahead of"
		}
		r.Detail = fmt.Sprintf("this node's clock is %s %s the controller's", approxdur.String(st.ClockSkew.Abs()), ahead)
		r.Fix = identity.NTPAdvice + " on this node (and the controller)"
		return r
	}
	r.OK, r.Detail = true, fmt.Sprintf("within %s of the controller's (measured at the last welcome)", approxdur.String(max(st.ClockSkew.Abs(), time.Second)))
	return r
}

func checkGossip(st *agentstatus.Status) Result {
	r := Result{Check: "gossip"}
	switch {
	case !st.Gossip:
		r.OK, r.Detail = true, "off (--gossip-listen \"\"): the controller tells down from unreachable by heartbeats only"
	case st.GossipAlive < 2:
		r.Detail = fmt.Sprintf("sees no peer alive (%d members known)", st.GossipMembers)
		r.Fix = "open the gossip port (default 7946, TCP and UDP) between nodes and the controller, and check --gossip-advertise"
	default:
		r.OK, r.Detail = true, fmt.Sprintf("%d members alive of %d known", st.GossipAlive, st.GossipMembers)
	}
	return r
}

func checkDisks(cfg Config, dests []string) []Result {
	var out []Result
	for _, d := range facts.Disks(cfg.StateDir, cfg.Root, dests) {
		r := Result{Check: "disk " + d.GetPath()}
		floor := cfg.MinFree
		if floor == 0 {
			floor = min(1<<30, d.GetTotalBytes()/20)
		}
		detail := fmt.Sprintf("%s free of %s (%s)", bytesize.IEC(d.GetFreeBytes()), bytesize.IEC(d.GetTotalBytes()), strings.Join(d.GetUses(), ", "))
		if d.GetFreeBytes() < floor {
			r.Detail, r.Fix = detail+", under "+bytesize.IEC(floor), "free space there: downloads are staged in the state dir, and an archive step needs room for the new tree beside the old"
		} else {
			r.OK, r.Detail = true, detail
		}
		out = append(out, r)
	}
	return out
}

func checkDrift(cfg Config, ro *install.Installer) Result {
	r := Result{Check: "installed files"}
	how := "sizes, modes and times; --full hashes them"
	if cfg.Full {
		how = "full, with hashes"
	}
	rep, err := ro.CheckDrift(cfg.Full)
	if err != nil {
		r.Detail, r.Fix = err.Error(), "see the message"
		return r
	}
	if len(rep.GetPackages()) == 0 {
		r.OK, r.Detail = true, fmt.Sprintf("%s checked, all as Ferry installed them (%s)", plural(int(rep.GetChecked()), "package"), how)
		return r
	}
	p := rep.GetPackages()[0]
	r.Detail = fmt.Sprintf("drift in %d of %s checked, e.g. %s %s: %s (%s)", len(rep.GetPackages()), plural(int(rep.GetChecked()), "package"), p.GetName(), p.GetVersion(), plural(int(p.GetChanged()), "entry"), strings.Join(p.GetExamples(), "; "))
	r.Fix = "run ferry-agent verify for the list; roll the version out again to repair it (ferryctl rollout --group GROUP --package " + p.GetName() + "@" + p.GetVersion() + ")"
	return r
}

func checkVisudo(cfg Config) Result {
	r := Result{Check: "visudo"}
	p := cfg.Visudo
	if p == "" {
		var ok bool
		if p, ok = sudoers.VisudoPath(); !ok {
			r.Detail = "not found"
			r.Fix = "install sudo (e.g. apt-get install sudo): sudoers steps are then checked by visudo as well as by Ferry's own checker"
			return r
		}
	}
	if _, err := os.Stat(p); err != nil {
		r.Detail, r.Fix = err.Error(), "install sudo, or point at visudo"
		return r
	}
	r.OK, r.Detail = true, p
	return r
}

// plural is "1 package", "2 packages", "1 entry", "3 entries".
func plural(n int, noun string) string {
	switch {
	case n == 1:
		return "1 " + noun
	case strings.HasSuffix(noun, "y"):
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
