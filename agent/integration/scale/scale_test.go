package scale

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Knobs of the benchmark, from the environment.
const (
	envAgents = "FERRY_SCALE_AGENTS" // comma-separated fleet sizes (default 1000,5000)
	envWindow = "FERRY_SCALE_WINDOW" // steady-state CPU window (default 30s)
	envLogs   = "FERRY_SCALE_LOGS"   // a folder to keep the controller's log in
	// FERRY_SCALE_RECONNECT picks the simulated agents' reconnect mode
	// (default "agent", the real agent's; see Reconnect).
	envReconnect = "FERRY_SCALE_RECONNECT"
)

const (
	heartbeatInterval = 5 * time.Second // the default the issue sets the goal for
	warmup            = 10 * time.Second
	latencyWindow     = 20 * time.Second
	listEvery         = 2 * time.Second // below the heartbeat interval: every heartbeat is seen
	// enrollParallel: the controller commits each enrollment on its own
	// (a bbolt transaction, two fsyncs), the agent side writes four files
	// with fsync; 64 in flight overlap them (about 175/s here).
	enrollParallel = 64
)

// BenchmarkFleetScale runs a controller process with heartbeats every 5 s
// and gossip off, connects N simulated agents (each its own certificate and
// TLS connection) and reports, at steady state: the controller's CPU
// (cores) and RSS, RSS per agent above the idle controller, heartbeat
// processing latency; then it restarts the controller (SIGTERM, start on
// the same data dir and port) and reports how long until every agent has
// its stream back, with the real agent's backoff. b.N is ignored: one run
// is one measurement. With -benchmem, B/op and allocs/op are the
// simulator's own allocations over the run, not the controller's.
func BenchmarkFleetScale(b *testing.B) {
	sizes := []int{1000, 5000}
	if s := os.Getenv(envAgents); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want comma-separated positive fleet sizes, e.g. 1000,5000", envAgents, s)
			}
			sizes = append(sizes, n)
		}
	}
	window := 30 * time.Second
	if s := os.Getenv(envWindow); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second {
			b.Fatalf("%s=%q: want a duration of at least 1s, e.g. 30s", envWindow, s)
		}
		window = d
	}
	mode := ReconnectAgent
	if s := os.Getenv(envReconnect); s != "" {
		mode = Reconnect(s)
		switch mode {
		case ReconnectAgent, ReconnectStacked, ReconnectWaitForReady, ReconnectReset:
		default:
			b.Fatalf("%s=%q: want %s, %s, %s or %s", envReconnect, s, ReconnectAgent, ReconnectStacked, ReconnectWaitForReady, ReconnectReset)
		}
	}
	for _, n := range sizes {
		name := fmt.Sprintf("agents=%d", n)
		if mode != ReconnectAgent {
			name += "/reconnect=" + string(mode)
		}
		b.Run(name, func(b *testing.B) { runScale(b, n, window, mode) })
	}
}

func runScale(b *testing.B, n int, window time.Duration, mode Reconnect) {
	h := e2e.New(b)
	raiseNoFile(b, uint64(n)+1024)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c := h.StartController(e2e.ControllerOptions{
		HeartbeatInterval: heartbeatInterval,
		NoGossip:          true,
		StartTimeout:      30 * time.Second,
		Prefix:            nicePrefix(),
	})
	time.Sleep(time.Second)
	idle := procMemory(b, c.PID())

	// Enroll with the real agent's code, a few at a time.
	tok := h.CreateToken(e2e.TokenOptions{Group: "scale", Uses: n, TTL: time.Hour})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("sim-%05d", i)
	}
	began := time.Now()
	enrolled, err := Enroll(ctx, Enrollment{Controller: c.Advertise, Token: tok.Secret, CAPin: tok.CAPin, Dir: filepath.Join(h.Dir(), "nodes"), Parallel: enrollParallel}, ids)
	if err != nil {
		b.Fatal(err)
	}
	enrollTime := time.Since(began)

	admin, err := DialAdmin(c.AdminConfig, c.Advertise)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	if dir := os.Getenv(envLogs); dir != "" {
		defer func() {
			path := filepath.Join(dir, fmt.Sprintf("controller-%d.log", n))
			if err := os.WriteFile(path, []byte(c.FullLog()), 0o644); err != nil {
				b.Errorf("keep the controller log: %v", err)
			}
		}()
	}
	nodes := ferryv1.NewNodeServiceClient(admin)

	fleet, err := NewFleet(AgentConfig{Controller: c.Advertise, CA: enrolled.CA, Facts: facts.Detect(), Reconnect: mode}, ids, enrolled.Certs)
	if err != nil {
		b.Fatal(err)
	}
	began = time.Now()
	fleet.Start(ctx, heartbeatInterval)
	defer fleet.Stop()
	last, err := fleet.WaitConnected(ctx, time.Time{}, 2*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	connectTime := last.Sub(began)
	time.Sleep(warmup)

	// Steady state: CPU and RSS, no admin calls.
	sess0, _, _ := fleet.Totals()
	m0 := scrape(b, c)
	st := measure(b, c.PID(), window)
	m1 := scrape(b, c)
	sess1, _, _ := fleet.Totals()
	hbRate := (m1["ferry_heartbeats_received_total"] - m0["ferry_heartbeats_received_total"]) / st.wall.Seconds()

	// Heartbeat processing latency: the controller's record of when it
	// processed each node's latest heartbeat (ListNodes' last_heartbeat,
	// the time fleet.Registry.Heartbeat reads just before it takes the
	// registry lock), minus when the simulated agent sent it (recovered
	// from the uptime the heartbeat carried; one clock, one machine). It
	// covers marshalling, TLS, the kernel, gRPC's read and decode and the
	// stream's receive loop; not the wait for the registry lock.
	lw := heartbeatLatency(b, ctx, st.pid, nodes, fleet, latencyWindow)
	latS, listS := Summarize(lw.all), Summarize(lw.list)
	duringS, outsideS := Summarize(lw.duringList), Summarize(lw.outsideList)

	// Restart: SIGTERM, start again on the same data dir and port, and
	// wait until every agent has its stream back and a heartbeat in.
	failsBefore := make([]int64, n)
	for i, a := range fleet.Agents {
		failsBefore[i] = a.Failures()
	}
	selfStorm0 := procCPU(b, os.Getpid())
	mBusy0, mTotal0 := machineCPU(b)
	stopAt := time.Now()
	if code := c.Stop(); code != 0 {
		b.Fatalf("controller exited %d after SIGTERM, want 0", code)
	}
	launchAt := time.Now()
	// The storm starts while Start still waits for /readyz: sample the
	// new process from its launch.
	oldPID := st.pid
	peak := make(chan float64, 1)
	stormCtx, stormOver := context.WithCancel(ctx)
	defer stormOver()
	stormDone := stormCtx.Done()
	go func() {
		for c.PID() == oldPID {
			select {
			case <-stormDone:
				peak <- 0
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		peak <- peakCores(c.PID(), stormDone)
	}()
	c.Start()
	readyAt := time.Now()
	pid := c.PID()
	last, err = fleet.WaitConnected(ctx, stopAt, 2*time.Minute)
	stormOver()
	if err != nil {
		b.Fatal(err)
	}
	stormCPU := procCPU(b, pid)
	selfStorm := procCPU(b, os.Getpid()) - selfStorm0
	mBusy1, mTotal1 := machineCPU(b)
	machineBusy := float64(mBusy1-mBusy0) / float64(mTotal1-mTotal0) * float64(runtime.NumCPU())
	stormWall := last.Sub(launchAt)
	peakStorm := <-peak
	confirmedAt := waitHeartbeats(b, ctx, nodes, n, 30*time.Second)
	after := procMemory(b, pid)
	back := make([]time.Duration, n)
	var attempts []time.Duration // failed attempts per agent, as durations for Summarize
	var dial, hello, firstTry []time.Duration
	for i, a := range fleet.Agents {
		back[i] = a.LastWelcome().Sub(stopAt)
		attempts = append(attempts, time.Duration(a.Failures()-failsBefore[i]))
		began, streamed := a.LastAttempt()
		dial = append(dial, streamed.Sub(began))
		hello = append(hello, a.LastWelcome().Sub(streamed))
		firstTry = append(firstTry, began.Sub(stopAt))
	}
	backS, attS := Summarize(back), Summarize(attempts)
	dialS, helloS, tryS := Summarize(dial), Summarize(hello), Summarize(firstTry)

	cores := st.cpu.Seconds() / st.wall.Seconds()
	simCores := st.selfCPU.Seconds() / st.wall.Seconds()
	perAgent := float64(st.rss.RSS-idle.RSS) / float64(n) / 1024
	reconnect := last.Sub(stopAt)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(cores, "cores")
	b.ReportMetric(float64(st.rss.RSS)/(1<<20), "rss_MiB")
	b.ReportMetric(perAgent, "rss_KiB_per_agent")
	b.ReportMetric(ms(latS.P50), "hb_latency_p50_ms")
	b.ReportMetric(ms(latS.P99), "hb_latency_p99_ms")
	b.ReportMetric(reconnect.Seconds(), "reconnect_s")
	b.ReportMetric(stormCPU.Seconds()/stormWall.Seconds(), "storm_cores")
	b.ReportMetric(simCores, "sim_cores")

	b.Logf("fleet of %d simulated agents, heartbeat %v ±10%%, gossip off, reconnect mode %q; controller pid %d then %d, run as %q; enroll %v (%.0f/s, %d in flight); first connect of all %v (starts spread over %v)",
		n, heartbeatInterval, mode, st.pid, pid, strings.Join(append(nicePrefix(), "ferry-controller"), " "),
		enrollTime.Round(time.Millisecond), float64(n)/enrollTime.Seconds(), enrollParallel, connectTime.Round(time.Millisecond), heartbeatInterval)
	b.Logf("steady %v: controller %.3f cores, RSS %.1f MiB (idle %.1f MiB, +%.1f KiB per agent), %d threads; simulator %.3f cores; whole machine %.2f of %d cores busy",
		st.wall.Round(time.Millisecond), cores, mib(st.rss.RSS), mib(idle.RSS), perAgent, st.rss.Threads, simCores, st.machine, runtime.NumCPU())
	b.Logf("steady: heartbeats processed %.1f/s (expected %.1f/s), goroutines %.0f (%.1f per agent), heap in use %.1f MiB, stacks %.1f MiB, streams re-established during the window %d",
		hbRate, float64(n)/heartbeatInterval.Seconds(), m1["go_goroutines"], m1["go_goroutines"]/float64(n), m1["go_memstats_heap_inuse_bytes"]/(1<<20), m1["go_memstats_stack_inuse_bytes"]/(1<<20), sess1-sess0)
	b.Logf("heartbeat processing latency (send to the registry update, %d heartbeats, while ListNodes ran every %v): p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms",
		latS.N, listEvery, ms(latS.P50), ms(latS.P90), ms(latS.P99), ms(latS.Max))
	b.Logf("  processed while a ListNodes call was in flight: %d, p50 %.2fms p99 %.2fms max %.2fms; the others: %d, p50 %.2fms p99 %.2fms max %.2fms",
		duringS.N, ms(duringS.P50), ms(duringS.P99), ms(duringS.Max), outsideS.N, ms(outsideS.P50), ms(outsideS.P99), ms(outsideS.Max))
	b.Logf("ListNodes of all %d nodes: %d calls, p50 %.1fms max %.1fms; controller CPU %.1fms per call above the steady rate",
		n, listS.N, ms(listS.P50), ms(listS.Max), ms(max(0, lw.cpu-time.Duration(cores*float64(lw.wall)))/time.Duration(max(listS.N, 1))))
	b.Logf("restart: SIGTERM to exit %v, launch to ready %v; all %d agents back %v after SIGTERM (%v after launch); per agent p50 %v p90 %v max %v; failed attempts per agent p50 %d max %d; all heartbeats confirmed by ListNodes %v after SIGTERM",
		launchAt.Sub(stopAt).Round(time.Millisecond), readyAt.Sub(launchAt).Round(time.Millisecond), n, reconnect.Round(time.Millisecond), stormWall.Round(time.Millisecond),
		backS.P50.Round(time.Millisecond), backS.P90.Round(time.Millisecond), backS.Max.Round(time.Millisecond), attS.P50, attS.Max, confirmedAt.Sub(stopAt).Round(time.Millisecond))
	b.Logf("storm, the successful attempt: began after SIGTERM p50 %v max %v; Connect (transport and stream) p50 %v p90 %v max %v; hello to welcome p50 %v max %v",
		tryS.P50.Round(time.Millisecond), tryS.Max.Round(time.Millisecond), dialS.P50.Round(time.Millisecond), dialS.P90.Round(time.Millisecond), dialS.Max.Round(time.Millisecond),
		helloS.P50.Round(time.Millisecond), helloS.Max.Round(time.Millisecond))
	b.Logf("storm: controller %.3f cores on average from launch to the last agent back, peak %.2f cores over 1s; simulator %.3f cores; whole machine %.2f of %d cores busy (SIGTERM to last back); RSS %.1f MiB after, peak %.1f MiB",
		stormCPU.Seconds()/stormWall.Seconds(), peakStorm, selfStorm.Seconds()/reconnect.Seconds(), machineBusy, runtime.NumCPU(), mib(after.RSS), mib(after.PeakRSS))
}

// controllerNice is the priority the controller runs at when the
// benchmark may raise it (as root): on a shared machine, other builds and
// tests would otherwise decide how fast the controller gets through a
// reconnect storm. It changes when the controller gets CPU, not how much
// it uses.
const controllerNice = -10

func nicePrefix() []string {
	if os.Geteuid() != 0 {
		return nil
	}
	path, err := exec.LookPath("nice")
	if err != nil {
		return nil
	}
	return []string{path, "-n", strconv.Itoa(controllerNice)}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// raiseNoFile makes room for one socket per simulated agent.
func raiseNoFile(b *testing.B, need uint64) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		b.Fatal(err)
	}
	if l.Cur >= need {
		return
	}
	if l.Max < need {
		b.Fatalf("open-file limit: hard limit %d, the simulator needs %d; raise it (ulimit -Hn) or use fewer agents (%s)", l.Max, need, envAgents)
	}
	l.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		b.Fatalf("raise the open-file limit to %d: %v", need, err)
	}
}

func procMemory(b *testing.B, pid int) Memory {
	b.Helper()
	m, err := ProcMemory(pid)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func machineCPU(b *testing.B) (busy, total time.Duration) {
	b.Helper()
	busy, total, err := MachineCPU()
	if err != nil {
		b.Fatal(err)
	}
	return busy, total
}

func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, err := ProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

type steady struct {
	pid          int
	wall         time.Duration
	cpu, selfCPU time.Duration
	rss          Memory  // the highest RSS sampled
	machine      float64 // cores busy on the whole machine
}

// measure samples the controller's CPU and the simulator's own over a
// window, and the controller's RSS every second.
func measure(b *testing.B, pid int, window time.Duration) steady {
	b.Helper()
	return measureAll(b, []int{pid}, window)[0]
}

// measureAll is measure for several controllers over the same window.
func measureAll(b *testing.B, pids []int, window time.Duration) []steady {
	b.Helper()
	self := os.Getpid()
	st := make([]steady, len(pids))
	c0 := make([]time.Duration, len(pids))
	mb0, mt0 := machineCPU(b)
	for i, pid := range pids {
		st[i].pid, c0[i] = pid, procCPU(b, pid)
	}
	s0, t0 := procCPU(b, self), time.Now()
	for time.Since(t0) < window {
		time.Sleep(min(time.Second, window-time.Since(t0)))
		for i, pid := range pids {
			if m := procMemory(b, pid); m.RSS > st[i].rss.RSS {
				st[i].rss = m
			}
		}
	}
	s1, t1 := procCPU(b, self), time.Now()
	mb1, mt1 := machineCPU(b)
	machine := float64(mb1-mb0) / float64(mt1-mt0) * float64(runtime.NumCPU())
	for i, pid := range pids {
		st[i].wall, st[i].cpu, st[i].selfCPU = t1.Sub(t0), procCPU(b, pid)-c0[i], s1-s0
		st[i].machine = machine
	}
	return st
}

// peakCores is the highest CPU use of pid over one-second steps (the last
// one shorter) until done.
func peakCores(pid int, done <-chan struct{}) float64 {
	prev, err := ProcCPU(pid)
	if err != nil {
		return 0
	}
	at, peak := time.Now(), 0.0
	for {
		over := false
		select {
		case <-done:
			// The last, shorter step still counts unless it is too short
			// for the clock tick.
			if time.Since(at) < 200*time.Millisecond {
				return peak
			}
			over = true
		case <-time.After(time.Second):
		}
		cur, err := ProcCPU(pid)
		if err != nil {
			return peak
		}
		now := time.Now()
		peak = max(peak, (cur-prev).Seconds()/now.Sub(at).Seconds())
		if over {
			return peak
		}
		prev, at = cur, now
	}
}

// scrape reads the unlabelled samples of the controller's /metrics.
func scrape(b *testing.B, c *e2e.Controller) map[string]float64 {
	b.Helper()
	code, body := c.HTTPGet("/metrics")
	if code != 200 {
		b.Fatalf("GET /metrics: status %d", code)
	}
	return parseMetrics(body)
}

func parseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.ContainsRune(name, '{') {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out
}

// latencies are what the latency window measured.
type latencies struct {
	all, duringList, outsideList []time.Duration // heartbeat send to processed
	list                         []time.Duration // ListNodes calls
	cpu                          time.Duration   // the controller's CPU over the window
	wall                         time.Duration
}

// heartbeatLatency lists all nodes every listEvery for d and returns, for
// every heartbeat seen once, the time from its send to the controller
// processing it, split by whether a ListNodes call was in flight when the
// controller processed it; and the latency of each ListNodes call.
func heartbeatLatency(b *testing.B, ctx context.Context, pid int, nodes ferryv1.NodeServiceClient, fleet *Fleet, d time.Duration) latencies {
	b.Helper()
	type sample struct {
		processed time.Time
		lat       time.Duration
	}
	var (
		out     latencies
		samples []sample
		calls   [][2]time.Time
	)
	seen := map[string]time.Duration{}
	cpu0, began := procCPU(b, pid), time.Now()
	end := began.Add(d)
	for time.Now().Before(end) {
		t0 := time.Now()
		list, err := ListNodes(ctx, nodes, grpc.WaitForReady(true))
		if err != nil {
			b.Fatalf("ListNodes: %v", err)
		}
		t1 := time.Now()
		out.list = append(out.list, t1.Sub(t0))
		calls = append(calls, [2]time.Time{t0, t1})
		for _, n := range list {
			a, ok := fleet.Agent(n.GetId())
			if !ok || n.GetUptime() == nil || n.GetLastHeartbeat() == nil || !n.GetConnected() {
				continue
			}
			up := n.GetUptime().AsDuration()
			if seen[n.GetId()] == up {
				continue
			}
			seen[n.GetId()] = up
			at := n.GetLastHeartbeat().AsTime()
			samples = append(samples, sample{at, at.Sub(a.SentAt(up))})
		}
		time.Sleep(time.Until(t0.Add(listEvery)))
	}
	out.cpu, out.wall = procCPU(b, pid)-cpu0, time.Since(began)
	for _, s := range samples {
		out.all = append(out.all, s.lat)
		during := false
		for _, c := range calls {
			if !s.processed.Before(c[0]) && !s.processed.After(c[1]) {
				during = true
				break
			}
		}
		if during {
			out.duringList = append(out.duringList, s.lat)
		} else {
			out.outsideList = append(out.outsideList, s.lat)
		}
	}
	return out
}

// waitHeartbeats waits until ListNodes shows n nodes connected, each with a
// heartbeat processed by this controller run (a restarted controller knows
// no heartbeat until one arrives), and returns when it saw that.
func waitHeartbeats(b *testing.B, ctx context.Context, nodes ferryv1.NodeServiceClient, n int, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		list, err := ListNodes(ctx, nodes, grpc.WaitForReady(true))
		if err != nil {
			b.Fatalf("ListNodes: %v", err)
		}
		ok := 0
		for _, nd := range list {
			if nd.GetConnected() && nd.GetUptime() != nil {
				ok++
			}
		}
		if ok == n {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("after %v only %d of %d nodes are connected with a heartbeat", timeout, ok, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
