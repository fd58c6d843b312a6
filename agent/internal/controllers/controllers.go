// Package controllers is the agent's list of controller addresses and its
// choice of which one to dial next.
//
// An installation with several controllers gives its agents several
// addresses (--controller a:7443,b:7443), one DNS name that resolves to
// several, or both. Names are resolved again at every choice, so a
// controller added to or removed from DNS is seen at the next reconnect;
// every resolved address is a candidate of its own. Every controller's
// certificate carries the same server name (pki.ControllerServerName), so
// dialling an IP address instead of the name verifies the controller just
// as well.
//
// The choice, after each attempt:
//
//   - every address backs off on its own: its failures since it last held
//     an established session set when it may be dialled again, by the
//     agent's jittered exponential backoff, so a dead controller is not
//     hammered while the others are tried;
//   - among the addresses that may be dialled now, the one that held the
//     last established session comes first, then the others in turn from
//     a random start (so a fleet spreads over its controllers, and moves
//     to the next one after a failure);
//   - when none may be dialled now, the one whose backoff ends first.
//
// A move to another address that may be dialled now still waits a short
// jittered pause (backoff attempt 0), so the agents of a controller that
// died do not arrive at the next one all at once.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"
)

// MaxEntries bounds the configured list; MaxAddrs what one name may
// resolve to (the rest are ignored): a DNS answer is not a reason to
// keep state for thousands of addresses.
const (
	MaxEntries = 32
	MaxAddrs   = 16
)

// resolveTimeout bounds one name's lookup.
const resolveTimeout = 5 * time.Second

// Endpoint is one address the agent dials.
type Endpoint struct {
	Entry string // as configured: "ctl.example:7443"
	Addr  string // what is dialled: "10.0.0.2:7443", or Entry when it did not resolve
}

// String names the endpoint for a person: the configured entry, and the
// address it resolved to when that differs.
func (e Endpoint) String() string {
	if e.Addr == "" || e.Addr == e.Entry {
		return e.Entry
	}
	return e.Entry + " (" + e.Addr + ")"
}

// Resolved reports whether Addr is an IP address (resolved, or given so),
// which the dialler uses as it is.
func (e Endpoint) Resolved() bool {
	host, _, err := net.SplitHostPort(e.Addr)
	return err == nil && net.ParseIP(host) != nil
}

// Parse reads a list of controller addresses as the flag, the config file
// and the enrollment record give them: each item HOST:PORT, items may
// themselves be comma-separated, blanks are dropped, repeats kept once.
func Parse(items []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, item := range items {
		for _, a := range strings.Split(item, ",") {
			a = strings.TrimSpace(a)
			if a == "" || seen[a] {
				continue
			}
			if err := checkAddr(a); err != nil {
				return nil, err
			}
			seen[a] = true
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no controller address: give --controller HOST:PORT (several: a:7443,b:7443)")
	}
	if len(out) > MaxEntries {
		return nil, fmt.Errorf("%d controller addresses, more than the %d an agent takes; give fewer, or one DNS name that resolves to several", len(out), MaxEntries)
	}
	return out, nil
}

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return fmt.Errorf("controller address %q is not HOST:PORT (e.g. ctl.example:7443 or [2001:db8::1]:7443)", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("controller address %q: port %q is not a number from 1 to 65535", a, port)
	}
	return nil
}

// Config configures a List.
type Config struct {
	// Entries are the configured addresses (Parse's result).
	Entries []string
	// Backoff is the delay after the attempt-th failure in a row (0 for
	// the first) of one address: the agent's jittered backoff.
	Backoff func(attempt int) time.Duration
	// Start is where the turn starts among the addresses (any number,
	// taken modulo their count): random per agent, to spread a fleet.
	Start int
	// Resolve looks a host name up (default net.DefaultResolver.LookupHost).
	Resolve func(ctx context.Context, host string) ([]string, error)
	Now     func() time.Time
	Logger  *slog.Logger
}

// List is the agent's controllers and the state of each address. It is
// used by one goroutine (the agent's connection loop).
type List struct {
	cfg      Config
	state    map[string]*addrState // by Endpoint.Addr
	lastGood string                // Addr of the last established session
	lastTry  string                // Addr of the last attempt
	tried    bool                  // an attempt was made
	current  []Endpoint            // the last resolution
}

type addrState struct {
	failures int       // attempts in a row without an established session
	retryAt  time.Time // not dialled before (zero: at once)
}

// New checks the config.
func New(cfg Config) (*List, error) {
	if len(cfg.Entries) == 0 {
		return nil, errors.New("no controller address")
	}
	if cfg.Backoff == nil {
		return nil, errors.New("controllers: Backoff is required")
	}
	if cfg.Resolve == nil {
		cfg.Resolve = net.DefaultResolver.LookupHost
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Start < 0 {
		cfg.Start = -cfg.Start
	}
	return &List{cfg: cfg, state: map[string]*addrState{}}, nil
}

// Entries are the configured addresses.
func (l *List) Entries() []string { return l.cfg.Entries }

// Multiple reports whether the agent has more than one address to try
// (several entries, or a name that resolved to several).
func (l *List) Multiple() bool { return len(l.current) > 1 || len(l.cfg.Entries) > 1 }

// resolve turns the entries into endpoints: an IP address as it is, a
// name into each of its addresses, or the name itself when it does not
// resolve (the dial then says why).
func (l *List) resolve(ctx context.Context) []Endpoint {
	var out []Endpoint
	seen := map[string]bool{}
	add := func(e Endpoint) {
		if !seen[e.Addr] {
			seen[e.Addr] = true
			out = append(out, e)
		}
	}
	for _, entry := range l.cfg.Entries {
		host, port, err := net.SplitHostPort(entry)
		if err != nil || net.ParseIP(host) != nil {
			add(Endpoint{Entry: entry, Addr: entry})
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		addrs, err := l.cfg.Resolve(rctx, host)
		cancel()
		var ips []string
		for _, a := range addrs {
			if ip := net.ParseIP(a); ip != nil && len(ips) < MaxAddrs {
				ips = append(ips, a)
			}
		}
		if err != nil || len(ips) == 0 {
			if ctx.Err() == nil {
				l.cfg.Logger.Warn("cannot resolve the controller's name; dialling it by name, which says why it fails", "controller", entry, "err", resolveReason(err))
			}
			add(Endpoint{Entry: entry, Addr: entry})
			continue
		}
		for _, ip := range ips {
			add(Endpoint{Entry: entry, Addr: net.JoinHostPort(ip, port)})
		}
	}
	return out
}

func resolveReason(err error) string {
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		return "the name has no IP address"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return "no such host in DNS"
	case errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return fmt.Sprintf("DNS did not answer within %v", resolveTimeout)
	}
	return err.Error()
}

// Next resolves the entries and returns the endpoint to dial next and how
// long to wait before dialling it (0 for the first attempt).
func (l *List) Next(ctx context.Context) (Endpoint, time.Duration) {
	eps := l.resolve(ctx)
	l.current = eps
	l.prune(eps)
	now := l.cfg.Now()
	// The turn: from the endpoint after the last attempt, or from Start.
	first := l.cfg.Start % len(eps)
	for i, e := range eps {
		if l.tried && e.Addr == l.lastTry {
			first = (i + 1) % len(eps)
			break
		}
	}
	var pick *Endpoint
	var earliest *Endpoint
	for k := range eps {
		e := &eps[(first+k)%len(eps)]
		st := l.state[e.Addr]
		if st == nil || !now.Before(st.retryAt) {
			if e.Addr == l.lastGood {
				pick = e
				break
			}
			if pick == nil {
				pick = e
			}
			continue
		}
		if earliest == nil || st.retryAt.Before(l.state[earliest.Addr].retryAt) {
			earliest = e
		}
	}
	switch {
	case pick != nil && !l.tried:
		return *pick, 0
	case pick != nil && pick.Addr == l.lastTry:
		return *pick, 0
	case pick != nil:
		// Another controller that may be dialled now: a short pause, so
		// the agents leaving one controller together spread out.
		return *pick, l.cfg.Backoff(0)
	default:
		return *earliest, l.state[earliest.Addr].retryAt.Sub(now)
	}
}

// prune drops the state of addresses no longer resolved.
func (l *List) prune(eps []Endpoint) {
	keep := map[string]bool{}
	for _, e := range eps {
		keep[e.Addr] = true
	}
	for a := range l.state {
		if !keep[a] {
			delete(l.state, a)
		}
	}
}

// Tried records that e was dialled (the turn goes on after it).
func (l *List) Tried(e Endpoint) {
	l.tried = true
	l.lastTry = e.Addr
}

// Established records that e held an established session: its failures
// start over, and it comes first while it may be dialled.
func (l *List) Established(e Endpoint) {
	l.lastGood = e.Addr
	if st := l.state[e.Addr]; st != nil {
		st.failures = 0
		st.retryAt = time.Time{}
	}
}

// Failed records that an attempt on e ended (the stream dropped, or it
// was never up): e backs off by its failures in a row, or for at least
// hold when that is longer (a refusal that retrying soon cannot help).
func (l *List) Failed(e Endpoint, hold time.Duration) time.Duration {
	st := l.state[e.Addr]
	if st == nil {
		st = &addrState{}
		l.state[e.Addr] = st
	}
	d := l.cfg.Backoff(st.failures)
	st.failures++
	d = max(d, hold)
	st.retryAt = l.cfg.Now().Add(d)
	return d
}
