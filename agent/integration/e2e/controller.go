package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ControllerOptions configure StartController. The zero value is a
// controller on 127.0.0.1 with 1 s heartbeats.
type ControllerOptions struct {
	// Host is the IP both listeners bind (default 127.0.0.1).
	Host string
	// HeartbeatInterval is the interval agents are told to use
	// (default 1s, to keep detection tests short).
	HeartbeatInterval time.Duration
	// NoGossip starts the controller without memberlist
	// (--gossip-listen ""); by default it gossips on a free port of Host.
	NoGossip bool
	// Args are extra flags.
	Args []string
	// UnitConfig runs the controller as its unit does, `--config
	// UnitConfig` followed by Args, without the harness's flags: the file
	// names the data dir (DataDir says where, for the test) and the
	// addresses. Host, HeartbeatInterval and NoGossip are not used.
	UnitConfig string
	DataDir    string
	// Binary is the ferry-controller to run (default: FERRY_BIN's), e.g.
	// one install.sh installed.
	Binary string
	// Prefix runs the controller under another command, e.g.
	// []string{"ip", "netns", "exec", "ns1"}.
	Prefix []string
	// StartTimeout bounds each start until /readyz answers (default 15s).
	StartTimeout time.Duration
	// ConfigFile is passed as --config, and the heartbeat interval is left
	// to it. Without one the controller reads no config file (--config=),
	// so a host's /etc/ferry/controller.yaml never leaks into a test.
	ConfigFile string
	// Name names the controller's process, log and data dir, for a test
	// with several (default "controller").
	Name string
	// JoinFrom is a controller of the same installation (on one etcd
	// store): its ca.crt, ca.key and gossip.key are copied into this one's
	// data dir before the first start and it starts with --join, the
	// documented join step.
	JoinFrom *Controller
}

// Controller is a running (or stopped) ferry-controller process. Its
// addresses are fixed by its first start, so a restart reuses the same
// data dir and ports.
type Controller struct {
	*Process
	opts ControllerOptions

	DataDir     string // --data-dir
	GRPCAddr    string // the gRPC listen address
	Advertise   string // the address agents and ferryctl dial
	HTTPAddr    string // /metrics, /healthz, /readyz
	GossipAddr  string // memberlist bind address; "" without gossip
	CAPin       string // sha256:HEX, as printed by the latest start
	AdminConfig string // the admin credential ferryctl uses
}

// DefaultHeartbeatInterval is the heartbeat interval the harness's
// controllers hand out unless told otherwise.
const DefaultHeartbeatInterval = time.Second

// StartController starts a controller with a new data dir on free ports,
// waits until it is ready, and makes it the one ferryctl talks to.
func (h *Harness) StartController(opts ControllerOptions) *Controller {
	h.t.Helper()
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 15 * time.Second
	}
	bin := opts.Binary
	if bin == "" {
		bin = h.Bin(ControllerBinary)
	}
	if opts.UnitConfig != "" {
		c := &Controller{opts: opts, DataDir: opts.DataDir}
		c.Process = h.newProcess("controller", bin, append([]string{"--config", opts.UnitConfig}, opts.Args...), opts.Prefix)
		h.mu.Lock()
		h.ctl = c
		h.mu.Unlock()
		c.Start()
		return c
	}
	name := opts.Name
	if name == "" {
		name = "controller"
	}
	c := &Controller{opts: opts, DataDir: h.path(name)}
	if opts.JoinFrom != nil {
		h.copySecrets(opts.JoinFrom.DataDir, c.DataDir)
	}
	if !opts.NoGossip {
		c.GossipAddr = net.JoinHostPort(opts.Host, strconv.Itoa(h.FreePort(opts.Host)))
	}
	// Port 0 on the first start: the kernel picks free ports and the
	// controller prints them, so parallel tests never race for a port.
	c.Process = h.newProcess(name, bin, c.args(net.JoinHostPort(opts.Host, "0"), net.JoinHostPort(opts.Host, "0")), opts.Prefix)
	h.mu.Lock()
	h.ctl = c
	h.mu.Unlock()
	c.Start()
	c.setArgs(c.args(c.GRPCAddr, c.HTTPAddr))
	return c
}

func (c *Controller) args(grpcAddr, httpAddr string) []string {
	args := []string{"--config=" + c.opts.ConfigFile,
		"--data-dir", c.DataDir,
		"--listen", grpcAddr,
		"--http-listen", httpAddr,
		"--gossip-listen", c.GossipAddr,
	}
	if c.opts.ConfigFile == "" {
		args = append(args, "--heartbeat-interval", c.opts.HeartbeatInterval.String())
	}
	if c.opts.JoinFrom != nil {
		args = append(args, "--join") // the documented join step's flag
	}
	return append(args, c.opts.Args...)
}

// copySecrets copies the installation's CA and gossip key from one data
// dir into a new one.
func (h *Harness) copySecrets(from, to string) {
	h.t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		h.t.Fatal(err)
	}
	for _, name := range []string{"ca.crt", "ca.key", "gossip.key"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			h.t.Fatalf("join a controller: %v", err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			h.t.Fatal(err)
		}
	}
}

// Use makes c the controller ferryctl talks to (with c's own admin
// credential).
func (h *Harness) Use(c *Controller) {
	h.mu.Lock()
	h.ctl = c
	h.mu.Unlock()
}

// Controller is the controller ferryctl talks to; it fails the test if none
// was started.
func (h *Harness) Controller() *Controller {
	h.t.Helper()
	h.mu.Lock()
	c := h.ctl
	h.mu.Unlock()
	if c == nil {
		h.t.Fatal("no controller: call StartController first")
	}
	return c
}

// Start starts the controller (again) and waits until it prints its
// addresses and CA pin and /readyz answers 200.
func (c *Controller) Start() {
	c.h.t.Helper()
	c.start()
	var banner map[string]string
	c.h.WaitFor("controller to print its addresses", c.opts.StartTimeout, func() (bool, string) {
		if !c.Running() {
			code, _ := c.Wait(time.Second)
			c.h.t.Fatalf("controller exited with code %d during start:\n%s", code, tail(c.Log(), 20))
		}
		banner = parseBanner(c.Log())
		return banner["admin credential"] != "", "output so far:\n" + tail(c.Log(), 10)
	})
	grpcAddr, adv, _ := strings.Cut(banner["gRPC"], " ")
	c.GRPCAddr, c.HTTPAddr = grpcAddr, banner["HTTP"]
	c.Advertise = strings.TrimSuffix(strings.TrimPrefix(adv, "(advertised as "), ")")
	if c.Advertise == "" {
		c.Advertise = grpcAddr
	}
	c.CAPin, c.AdminConfig = banner["CA pin"], banner["admin credential"]
	client := &http.Client{Timeout: time.Second}
	c.h.WaitFor("controller /readyz", c.opts.StartTimeout, func() (bool, string) {
		code, err := c.httpStatus(client, "/readyz")
		return code == http.StatusOK, fmt.Sprintf("status %d, error %v", code, err)
	})
}

// parseBanner reads the "  key: value" lines ferry-controller prints to
// stdout at start.
func parseBanner(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "  ") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// HTTPGet fetches a path from the controller's HTTP port and returns the
// status code and body.
func (c *Controller) HTTPGet(path string) (int, string) {
	c.h.t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + c.HTTPAddr + path)
	if err != nil {
		c.h.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.h.t.Fatalf("GET %s: read body: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

func (c *Controller) httpStatus(client *http.Client, path string) (int, error) {
	resp, err := client.Get("http://" + c.HTTPAddr + path)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// GRPCPort is the port of GRPCAddr, e.g. for a firewall rule.
func (c *Controller) GRPCPort() int {
	_, p, _ := net.SplitHostPort(c.GRPCAddr)
	n, _ := strconv.Atoi(p)
	return n
}
