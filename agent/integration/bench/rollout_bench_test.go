package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// caseTimeout bounds one case (a floor, a shell loop, a rollout).
const caseTimeout = 10 * time.Minute

// result is one case's figures.
type result struct {
	fleet  string        // "local N=8", "netns N=8 (200mbit)"
	name   string        // the case
	wall   time.Duration // from the first host's start to the last host's end
	served int64         // bytes the server sent; -1: not measured
	// cpu is the user and system time the case's processes used (the
	// commands and what they waited for; Ferry's agents and controller
	// during the rollout); 0: not measured. On a machine shared with
	// other work it moves less than the wall time does.
	cpu  time.Duration
	note string
}

// bench holds what every case shares: the artifact and where roots go.
type bench struct {
	tarball   string // the Go toolchain tar.gz, with tarball.sha256 beside it
	zst       string // the same tar stream as tar.zst (zstd -3), for the zstd floor; "" without the zstd command
	version   string // its Go version, e.g. 1.26.8
	size      int64  // the tarball's size
	scratch   string // where hosts' roots go (tmpfs when possible)
	scratchFS string // what scratch is, for the table

	mu      sync.Mutex
	results []result
	skips   map[string]string // sub-benchmark name: why it skipped
}

// add records r, replacing an earlier run of the same case (a
// sub-benchmark the framework ran again).
func (bn *bench) add(r result) {
	bn.mu.Lock()
	defer bn.mu.Unlock()
	for i, old := range bn.results {
		if old.fleet == r.fleet && old.name == r.name {
			bn.results[i] = r
			return
		}
	}
	bn.results = append(bn.results, r)
}

// BenchmarkRollout measures issue 15's cases once each and prints one
// table. Each case is its own sub-benchmark (its wall time is its
// ns/op); run it with -benchtime 1x, as `make bench-rollout` does.
func BenchmarkRollout(b *testing.B) {
	if os.Getenv("FERRY_BIN") == "" {
		b.Skip("rollout benchmark skipped: FERRY_BIN is not set; run `make bench-rollout` (or `make bench`)")
	}
	for _, tool := range []string{"tar", "gzip", "sha256sum", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("rollout benchmark skipped: needs %s", tool)
		}
	}
	sizes, err := sizesFrom("FERRY_BENCH_ROLLOUT_N", "8,16")
	if err != nil {
		b.Fatal(err)
	}
	netSizes, err := sizesFrom("FERRY_BENCH_NETNS_N", "8")
	if err != nil {
		b.Fatal(err)
	}
	rate := os.Getenv("FERRY_BENCH_RATE")
	if rate == "" {
		rate = "200mbit"
	}
	bn := &bench{skips: map[string]string{}}
	bn.scratch, bn.scratchFS = scratchDir(b)
	bn.tarball, bn.version = e2e.PackGoToolchain(b, b.TempDir())
	fi, err := os.Stat(bn.tarball)
	if err != nil {
		b.Fatal(err)
	}
	bn.size = fi.Size()
	curl, _ := exec.LookPath("curl")
	if _, err := exec.LookPath("zstd"); err == nil {
		bn.zst = strings.TrimSuffix(bn.tarball, ".tar.gz") + ".tar.zst"
		if out, err := exec.Command("sh", "-c", `gzip -dc "$1" | zstd -3 -q -o "$2"`, "sh", bn.tarball, bn.zst).CombinedOutput(); err != nil {
			b.Fatalf("pack the zstd floor's tarball: %v: %s", err, out)
		}
	}

	for _, n := range sizes {
		fleet := fmt.Sprintf("local N=%d", n)
		b.Run(fmt.Sprintf("local/N=%d/tar-floor", n), func(b *testing.B) { bn.add(bn.floor(b, fleet, n)) })
		b.Run(fmt.Sprintf("local/N=%d/zstd-floor", n), func(b *testing.B) {
			if bn.zst == "" {
				bn.add(result{fleet: fleet, name: zstdFloorName, served: -1, note: "skipped: needs the zstd command"})
				b.Skip("needs the zstd command")
			}
			bn.add(bn.zstdFloor(b, fleet, n))
		})
		b.Run(fmt.Sprintf("local/N=%d/shell-loop", n), func(b *testing.B) {
			defer bn.noteSkip(b, fleet, "shell loop")
			if curl == "" {
				bn.skip(b, "needs curl (command -v curl found nothing)")
			}
			srv := newFileServer(b, bn.tarball)
			bn.add(bn.shellLoop(b, fleet, n, srv.url, nil, srv.served.Load))
		})
		b.Run(fmt.Sprintf("local/N=%d/ferry", n), func(b *testing.B) { bn.add(bn.ferryLocal(b, fleet, n)) })
	}
	for _, n := range netSizes {
		fleet := fmt.Sprintf("netns N=%d, egress %s", n, rate)
		b.Run(fmt.Sprintf("netns/N=%d/tar-floor", n), func(b *testing.B) { bn.add(bn.floor(b, fleet, n)) })
		b.Run(fmt.Sprintf("netns/N=%d/shell-loop", n), func(b *testing.B) {
			defer bn.noteSkip(b, fleet, "shell loop through the cap")
			if curl == "" {
				bn.skip(b, "needs curl (command -v curl found nothing)")
			}
			bn.netnsShellLoop(b, fleet, n, rate)
		})
		b.Run(fmt.Sprintf("netns/N=%d/ferry", n), func(b *testing.B) {
			defer bn.noteSkip(b, fleet, ferryNoPeers)
			bn.netnsFerry(b, fleet, n, rate, false)
		})
		b.Run(fmt.Sprintf("netns/N=%d/ferry-peers", n), func(b *testing.B) {
			defer bn.noteSkip(b, fleet, ferryPeers)
			bn.netnsFerry(b, fleet, n, rate, true)
		})
	}
	bn.print(os.Stdout)
}

// noteSkip, deferred in a sub-benchmark, puts a skipped case in the
// table so that it does not silently vanish.
func (bn *bench) noteSkip(b *testing.B, fleet, name string) {
	if !b.Skipped() {
		return
	}
	bn.mu.Lock()
	why := bn.skips[b.Name()]
	bn.mu.Unlock()
	if why == "" {
		why = "the harness skipped it (go test -v says why)"
	}
	bn.add(result{fleet: fleet, name: name, served: -1, note: "skipped: " + why})
}

// skip skips b and keeps why for the table.
func (bn *bench) skip(b *testing.B, why string) {
	b.Helper()
	bn.mu.Lock()
	bn.skips[b.Name()] = why
	bn.mu.Unlock()
	b.Skip(why)
}

func sizesFrom(env, def string) ([]int, error) {
	v := os.Getenv(env)
	if v == "" {
		v = def
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || n > 200 {
			return nil, fmt.Errorf("%s=%q: give fleet sizes from 0 to 200, comma-separated, e.g. 8,16", env, v)
		}
		if n > 0 {
			out = append(out, n)
		}
	}
	return out, nil
}

// scratchDir is where hosts' roots go: a folder on /dev/shm when that is
// a tmpfs, else a tmpfs mounted for the benchmark (root only), else the
// test's temporary folder on disk. The second value says which.
func scratchDir(b *testing.B) (string, string) {
	const tmpfsMagic = 0x01021994
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == tmpfsMagic {
		dir, err := os.MkdirTemp("/dev/shm", "ferry-bench-")
		if err == nil {
			b.Cleanup(func() { _ = os.RemoveAll(dir) })
			return dir, "tmpfs (/dev/shm)"
		}
	}
	dir := b.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16g", "ferry-bench", dir).CombinedOutput()
	if err == nil {
		b.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
		return dir, "tmpfs (mounted for the benchmark)"
	}
	b.Logf("no tmpfs for the roots (mount: %v: %s): using %s on disk", err, strings.TrimSpace(string(out)), dir)
	return dir, "disk (" + dir + "): no tmpfs could be mounted"
}

// roots makes n empty host roots under the scratch folder and removes
// them when b ends.
func (bn *bench) roots(b *testing.B, n int) []string {
	b.Helper()
	dir, err := os.MkdirTemp(bn.scratch, "roots-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	roots := make([]string, n)
	for i := range roots {
		roots[i] = filepath.Join(dir, fmt.Sprintf("host-%02d", i+1))
		if err := os.MkdirAll(roots[i], 0o755); err != nil {
			b.Fatal(err)
		}
	}
	return roots
}

// parallel runs n commands at once, each in its own process group, and
// returns the wall time from the first start to the last end and the CPU
// time they used (with the children each waited for). Any failure fails b
// with that host's output.
func parallel(b *testing.B, n int, cmdFor func(i int) *exec.Cmd) (time.Duration, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range cmds {
		c := cmdFor(i)
		cmd := exec.CommandContext(ctx, c.Path, c.Args[1:]...)
		cmd.Env, cmd.Dir = c.Env, c.Dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		outs[i] = &strings.Builder{}
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		cmds[i] = cmd
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i, cmd := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = cmd.Run()
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	b.StopTimer()
	var cpu time.Duration
	for i, err := range errs {
		if err != nil {
			b.Fatalf("host %d: %s: %v\n%s", i+1, strings.Join(cmds[i].Args, " "), err, outs[i])
		}
		cpu += cmds[i].ProcessState.UserTime() + cmds[i].ProcessState.SystemTime()
	}
	return wall, cpu
}

// floor is N concurrent `tar -xzf` of the tarball, nothing else.
func (bn *bench) floor(b *testing.B, fleet string, n int) result {
	roots := bn.roots(b, n)
	wall, cpu := parallel(b, n, func(i int) *exec.Cmd {
		dest := filepath.Join(roots[i], "usr/local/go")
		return exec.Command("sh", "-c", `mkdir -p "$1" && exec tar -xzf "$2" -C "$1" --strip-components 1`, "sh", dest, bn.tarball)
	})
	return result{fleet: fleet, name: "parallel tar -xzf (gzip floor)", wall: wall, cpu: cpu, served: -1}
}

const zstdFloorName = "parallel zstd -d | tar -x (zstd floor)"

// zstdFloor is N concurrent `zstd -dc | tar -x` of the same tree as
// tar.zst, nothing else: the floor of the codec agents are given.
func (bn *bench) zstdFloor(b *testing.B, fleet string, n int) result {
	roots := bn.roots(b, n)
	wall, cpu := parallel(b, n, func(i int) *exec.Cmd {
		dest := filepath.Join(roots[i], "usr/local/go")
		return exec.Command("sh", "-c", `mkdir -p "$1" && zstd -dcq "$2" | tar -xf - -C "$1" --strip-components 1`, "sh", dest, bn.zst)
	})
	fi, err := os.Stat(bn.zst)
	if err != nil {
		b.Fatal(err)
	}
	return result{fleet: fleet, name: zstdFloorName, wall: wall, cpu: cpu, served: -1, note: fmt.Sprintf("tar.zst %.1f MiB (zstd -3)", float64(fi.Size())/(1<<20))}
}

// hostScript is what the shell loop does on each host: fetch the tarball
// and its .sha256 over plain HTTP, check it, extract it, write a
// profile.d file and a sudoers fragment (checked with visudo -cf where
// the host has it) and run go version from the root.
const hostScript = `set -eu
root=$1 url=$2 name=$3 want=$4
cd "$root"
mkdir -p dl usr/local/go etc/profile.d etc/sudoers.d
curl -fsS -o "dl/$name" "$url/$name"
curl -fsS -o "dl/$name.sha256" "$url/$name.sha256"
(cd dl && sha256sum -c --quiet "$name.sha256")
tar -xzf "dl/$name" -C usr/local/go --strip-components 1
printf 'export GOROOT=/usr/local/go\nexport PATH=/usr/local/go/bin:$PATH\n' >etc/profile.d/go.sh.tmp
mv etc/profile.d/go.sh.tmp etc/profile.d/go.sh
printf '%%deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart app\n' >etc/sudoers.d/.go-bench.tmp
if command -v visudo >/dev/null 2>&1; then visudo -cf etc/sudoers.d/.go-bench.tmp >/dev/null; fi
chmod 0440 etc/sudoers.d/.go-bench.tmp
mv etc/sudoers.d/.go-bench.tmp etc/sudoers.d/go-bench
out=$(GOROOT="$root/usr/local/go" "$root/usr/local/go/bin/go" version)
case $out in *"go$want "*) ;; *) echo "go version printed: $out" >&2; exit 1;; esac
`

// shellLoop runs hostScript on n hosts at once against url; prefix(i)
// runs host i's script in its namespace (nil: here). served reads the
// server's bytes sent so far (nil: not measured).
func (bn *bench) shellLoop(b *testing.B, fleet string, n int, url string, prefix func(i int) []string, served func() int64) result {
	roots := bn.roots(b, n)
	var before int64
	if served != nil {
		before = served()
	}
	wall, cpu := parallel(b, n, func(i int) *exec.Cmd {
		argv := []string{"sh", "-c", hostScript, "sh", roots[i], url, filepath.Base(bn.tarball), bn.version}
		if prefix != nil {
			argv = append(prefix(i), argv...)
		}
		return exec.Command(argv[0], argv[1:]...)
	})
	r := result{fleet: fleet, name: "shell loop: curl, sha256sum -c, tar -xzf, profile.d, " + visudoNote() + ", go version", wall: wall, cpu: cpu, served: -1}
	if served != nil {
		r.served = served() - before
	}
	return r
}

func visudoNote() string {
	if _, err := exec.LookPath("visudo"); err == nil {
		return "visudo -cf"
	}
	return "no visudo here"
}

// fileServer is a plain HTTP server in the test process serving the
// tarball's folder and counting the bytes it sends.
type fileServer struct {
	url    string
	served atomic.Int64
}

func newFileServer(b *testing.B, tarball string) *fileServer {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	fs := &fileServer{url: "http://" + ln.Addr().String()}
	files := http.FileServer(http.Dir(filepath.Dir(tarball)))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		files.ServeHTTP(&countingWriter{ResponseWriter: w, n: &fs.served}, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return fs
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// packageYAML is the rollout's package: the toolchain as an archive, its
// env, a sudoers fragment and a check running go version.
func (bn *bench) packageYAML() string {
	return fmt.Sprintf(`name: go
version: %[1]s
artifact: %[2]s
steps:
  - archive: {dest: /usr/local/go, strip_components: 1}
  - env: {name: go, vars: {GOROOT: /usr/local/go}, path: [/usr/local/go/bin]}
  - sudoers: {name: go-bench, rules: ["%%deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart app"]}
  - check: {run: "go version", expect: "go%[1]s "}
`, bn.version, filepath.Base(bn.tarball))
}

// ferryFleet is a controller and n agents, enrolled in group bench and
// healthy, with the package applied, ready for the rollout.
type ferryFleet struct {
	h *e2e.Harness
	c *e2e.Controller
}

// newHarness starts a harness whose folder (controller data, agents'
// state dirs and roots) is on the scratch filesystem.
func (bn *bench) newHarness(b *testing.B) *e2e.Harness {
	b.Setenv("TMPDIR", bn.scratch)
	return e2e.New(b)
}

// prepare pushes the artifact and applies the package, then waits until
// every agent is healthy. It returns how long the push took.
func (f *ferryFleet) prepare(b *testing.B, bn *bench, ids []string) time.Duration {
	b.Helper()
	start := time.Now()
	f.ctl(b, time.Minute, "artifact", "push", bn.tarball, "--checksum-file", bn.tarball+".sha256")
	push := time.Since(start)
	pkg := filepath.Join(f.h.Dir(), "go.yaml")
	if err := os.WriteFile(pkg, []byte(bn.packageYAML()), 0o644); err != nil {
		b.Fatal(err)
	}
	f.ctl(b, time.Minute, "package", "apply", "-f", pkg)
	for _, id := range ids {
		f.h.WaitNodeState(id, e2e.Healthy, 2*time.Minute)
	}
	return push
}

func (f *ferryFleet) ctl(b *testing.B, timeout time.Duration, args ...string) {
	b.Helper()
	res := f.h.ExecTimeout(timeout, []string{"FERRY_CONFIG=" + f.c.AdminConfig}, f.h.Bin(e2e.CtlBinary), append([]string{"--timeout", "1m"}, args...)...)
	if res.Exit != 0 {
		b.Fatalf("ferryctl %s: %s", strings.Join(args, " "), res)
	}
}

// rollout times `ferryctl rollout` to the whole group and returns the
// wall time and the bytes the controller served meanwhile.
func (f *ferryFleet) rollout(b *testing.B, bn *bench) (time.Duration, int64) {
	b.Helper()
	before := f.bytesServed(b)
	b.ResetTimer()
	start := time.Now()
	f.ctl(b, caseTimeout, "rollout", "--group", "bench", "--package", "go@"+bn.version,
		"--canary", "0", "--max-parallel", "100%", "--healthy-for", "0s")
	wall := time.Since(start)
	b.StopTimer()
	return wall, f.bytesServed(b) - before
}

// bytesServed reads ferry_artifact_bytes_served_total from the
// controller's /metrics.
func (f *ferryFleet) bytesServed(b *testing.B) int64 {
	b.Helper()
	code, body := f.c.HTTPGet("/metrics")
	if code != http.StatusOK {
		b.Fatalf("controller /metrics answered %d", code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == "ferry_artifact_bytes_served_total" {
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				b.Fatalf("controller /metrics: %s: %v", sc.Text(), err)
			}
			return int64(v)
		}
	}
	b.Fatal("controller /metrics has no ferry_artifact_bytes_served_total")
	return 0
}

// checkRoots fails b unless go version runs from every agent's root.
func (bn *bench) checkRoots(b *testing.B, roots []string) {
	b.Helper()
	for _, root := range roots {
		goBin := filepath.Join(root, "usr/local/go/bin/go")
		cmd := exec.Command(goBin, "version")
		cmd.Env = append(os.Environ(), "GOROOT="+filepath.Join(root, "usr/local/go"))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "go"+bn.version+" ") {
			b.Fatalf("%s version after the rollout: %v: %s", goBin, err, out)
		}
	}
}

// ferryLocal is a controller and n agents on loopback.
func (bn *bench) ferryLocal(b *testing.B, fleet string, n int) result {
	h := bn.newHarness(b)
	// The product's default heartbeat interval, as an operator runs it.
	f := &ferryFleet{h: h, c: h.StartController(e2e.ControllerOptions{HeartbeatInterval: 5 * time.Second})}
	tok := h.CreateToken(e2e.TokenOptions{Group: "bench", Uses: n})
	var ids, roots []string
	var agents []*e2e.Agent
	for i := range n {
		id := fmt.Sprintf("host-%02d", i+1)
		a := h.NewAgent(id, e2e.AgentOptions{})
		a.MustEnroll(tok)
		a.Start()
		ids, roots, agents = append(ids, id), append(roots, a.Root), append(agents, a)
	}
	agentsCPU := func() time.Duration {
		var sum time.Duration
		for _, a := range agents {
			sum += processCPU(b, a.PID())
		}
		return sum
	}
	cpu0 := processCPU(b, f.c.PID())
	push := f.prepare(b, bn, ids)
	cpu1, acpu1 := processCPU(b, f.c.PID()), agentsCPU()
	wall, served := f.rollout(b, bn)
	cpu2, acpu2 := processCPU(b, f.c.PID()), agentsCPU()
	bn.checkRoots(b, roots)
	return result{fleet: fleet, name: "Ferry rollout (archive, env, sudoers, check)", wall: wall, served: served, cpu: (cpu2 - cpu1) + (acpu2 - acpu1),
		note: fmt.Sprintf("controller CPU %.2fs in the rollout, agents' %.2fs (%.2fs each); the push took %.2fs and %.2fs of CPU, transcoding included",
			(cpu2 - cpu1).Seconds(), (acpu2 - acpu1).Seconds(), (acpu2-acpu1).Seconds()/float64(n), push.Seconds(), (cpu1 - cpu0).Seconds())}
}

// processCPU is the user and system CPU time process pid (the controller
// or an agent) has used, from /proc/PID/stat (clock ticks of 1/100 s, as
// on every Linux).
func processCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("CPU time of process %d: %v", pid, err)
	}
	// The fields after the command name, which ends with the last ')'.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("CPU time: /proc/%d/stat has %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("CPU time: /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// netns is a network of namespaces: a server host whose egress is capped
// with tc tbf at rate, and n client hosts.
type netns struct {
	nw      *e2e.Network
	server  *e2e.Host
	clients []*e2e.Host
}

// newNetns builds the network or skips b (not root, no ip/nft/tc).
func (bn *bench) newNetns(b *testing.B, n int, rate string) *netns {
	b.Helper()
	if os.Geteuid() != 0 {
		bn.skip(b, "needs root for network namespaces and tc")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		if _, err := os.Stat("/usr/sbin/ip"); err != nil {
			bn.skip(b, "needs the ip command (install iproute2)")
		}
	}
	tc := ""
	for _, p := range []string{"tc", "/usr/sbin/tc", "/sbin/tc"} {
		if path, err := exec.LookPath(p); err == nil {
			tc = path
			break
		}
	}
	if tc == "" {
		bn.skip(b, "needs tc (install iproute2)")
	}
	nw := e2e.NewNetworkNoCut(b) // skips when not root or without ip
	ns := &netns{nw: nw, server: nw.AddHost("srv")}
	for i := range n {
		ns.clients = append(ns.clients, nw.AddHost(fmt.Sprintf("h%02d", i+1)))
	}
	// The cap: a token bucket on the server's side of its link; burst
	// holds a 64 KiB GSO segment, latency bounds the queue.
	argv := append(ns.server.Prefix(), tc, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return ns
}

// txBytes is what the server host's eth0 has sent: every byte through
// the cap, headers and retransmissions included.
func (ns *netns) txBytes(b *testing.B) int64 {
	b.Helper()
	argv := append(ns.server.Prefix(), "cat", "/sys/class/net/eth0/statistics/tx_bytes")
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		b.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		b.Fatalf("tx_bytes %q: %v", out, err)
	}
	return v
}

// netnsShellLoop serves the tarball with python3 -m http.server in the
// capped server namespace and runs the shell loop in the client ones.
func (bn *bench) netnsShellLoop(b *testing.B, fleet string, n int, rate string) {
	python, err := exec.LookPath("python3")
	if err != nil {
		bn.skip(b, "needs python3 (http.server in the server's namespace)")
	}
	ns := bn.newNetns(b, n, rate)
	const port = 8080
	argv := append(ns.server.Prefix(), python, "-m", "http.server", strconv.Itoa(port), "--bind", ns.server.IP.String(), "--directory", filepath.Dir(bn.tarball))
	srv := exec.Command(argv[0], argv[1:]...)
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	srvLog := &strings.Builder{}
	srv.Stdout, srv.Stderr = io.Discard, srvLog
	if err := srv.Start(); err != nil {
		b.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	b.Cleanup(func() {
		_ = syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
		_ = srv.Wait()
	})
	url := "http://" + ns.server.Addr(port)
	waitHTTP(b, url+"/"+filepath.Base(bn.tarball)+".sha256")
	r := bn.shellLoop(b, fleet, n, url, func(i int) []string { return ns.clients[i].Prefix() }, func() int64 { return ns.txBytes(b) })
	r.note = "bytes: the server's eth0 tx (with TCP/IP headers)"
	bn.add(r)
}

func waitHTTP(b *testing.B, url string) {
	b.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not answer within 15s: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The netns Ferry cases.
const (
	ferryNoPeers = "Ferry rollout, no peer exchange"
	ferryPeers   = "Ferry rollout, peer exchange"
)

// netnsFerry runs the controller in the capped server namespace and one
// agent in each client namespace; with peers, each agent serves pieces
// on its namespace's address (--peer-listen), so the agents exchange the
// download over the bridge, beside the cap.
func (bn *bench) netnsFerry(b *testing.B, fleet string, n int, rate string, peers bool) {
	ns := bn.newNetns(b, n, rate) // before the harness: its cleanup must run last
	h := bn.newHarness(b)
	const gossipPort, peerPort = 7946, 7947 // each namespace has its own address
	f := &ferryFleet{h: h, c: h.StartController(e2e.ControllerOptions{
		Host:              ns.server.IP.String(),
		HeartbeatInterval: 5 * time.Second,
		Prefix:            ns.server.Prefix(),
		NoGossip:          true,
		Args:              []string{"--gossip-listen", ns.server.Addr(gossipPort)},
	})}
	tok := h.CreateToken(e2e.TokenOptions{Group: "bench", Uses: n})
	var ids, roots []string
	for i, host := range ns.clients {
		id := fmt.Sprintf("host-%02d", i+1)
		args := []string{"--gossip-listen", host.Addr(gossipPort)}
		if peers {
			args = append(args, "--peer-listen", host.Addr(peerPort))
		}
		a := h.NewAgent(id, e2e.AgentOptions{Prefix: host.Prefix(), Args: args})
		a.MustEnroll(tok)
		a.Start()
		ids, roots = append(ids, id), append(roots, a.Root)
	}
	f.prepare(b, bn, ids)
	tx := ns.txBytes(b)
	wall, served := f.rollout(b, bn)
	tx = ns.txBytes(b) - tx
	bn.checkRoots(b, roots)
	name := ferryNoPeers
	if peers {
		name = ferryPeers
	}
	bn.add(result{fleet: fleet, name: name, wall: wall, served: served,
		note: fmt.Sprintf("eth0 tx %.2f× the artifact", float64(tx)/float64(bn.size))})
}

// print writes the table: per fleet, each case's wall time, the bytes the
// server sent over the artifact's size, the throughput each host saw
// (artifact size / wall time) and the wall time over that fleet's floor.
func (bn *bench) print(w io.Writer) {
	fmt.Fprintf(w, "\nRollout benchmark (issue 15): artifact %s, %.1f MiB; Go %s; roots on %s\n",
		filepath.Base(bn.tarball), float64(bn.size)/(1<<20), bn.version, bn.scratchFS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fleet\tcase\twall\tserved/size\tper host MiB/s\t× floor\t× zstd floor\tCPU\tCPU × zstd floor\tnote")
	floors, zfloors, zcpu := map[string]time.Duration{}, map[string]time.Duration{}, map[string]time.Duration{}
	for _, r := range bn.results {
		if strings.HasPrefix(r.name, "parallel tar") {
			floors[r.fleet] = r.wall
		}
		if r.name == zstdFloorName {
			zfloors[r.fleet], zcpu[r.fleet] = r.wall, r.cpu
		}
	}
	for _, r := range bn.results {
		if r.wall == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t%s\n", r.fleet, r.name, r.note)
			continue
		}
		cpu, zcpuRatio := "-", "-"
		if r.cpu > 0 {
			cpu = fmt.Sprintf("%.2fs", r.cpu.Seconds())
			if z := zcpu[r.fleet]; z > 0 {
				zcpuRatio = fmt.Sprintf("%.2f", r.cpu.Seconds()/z.Seconds())
			}
		}
		served, ratio, zratio := "-", "-", "-"
		if r.served >= 0 {
			served = fmt.Sprintf("%.2f", float64(r.served)/float64(bn.size))
		}
		if fl := floors[r.fleet]; fl > 0 {
			ratio = fmt.Sprintf("%.2f", r.wall.Seconds()/fl.Seconds())
		}
		if fl := zfloors[r.fleet]; fl > 0 {
			zratio = fmt.Sprintf("%.2f", r.wall.Seconds()/fl.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2fs\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\n", r.fleet, r.name, r.wall.Seconds(), served,
			float64(bn.size)/(1<<20)/r.wall.Seconds(), ratio, zratio, cpu, zcpuRatio, r.note)
	}
	_ = tw.Flush()
}
