package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/identity"
	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// waitFor bounds every wait of these tests; reaching it is a failure, not
// part of what a test measures.
const waitFor = 10 * time.Second

// constSource is a jitter source that always draws the same number:
// lowDraw gives the shortest delays, highDraw the longest.
type constSource uint64

func (s constSource) Uint64() uint64 { return uint64(s) }

const (
	lowDraw  = constSource(1)
	highDraw = constSource(1<<64 - 1)
)

// logBuffer collects the agent's log and lets a test wait for a line.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed at the next write
}

func newLogBuffer() *logBuffer { return &logBuffer{written: make(chan struct{})} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.written)
	b.written = make(chan struct{})
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// line returns the first line logged at level that contains text.
func (b *logBuffer) line(level, text string) (string, bool) {
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, "level="+level) && strings.Contains(l, text) {
			return l, true
		}
	}
	return "", false
}

// wait returns the first line logged at level that contains text, waiting
// for it to be written.
func (b *logBuffer) wait(t *testing.T, level, text string) string {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		b.mu.Lock()
		written := b.written
		b.mu.Unlock()
		if l, ok := b.line(level, text); ok {
			return l
		}
		select {
		case <-written:
		case <-deadline:
			t.Fatalf("the agent logged no %s line containing %q within %v; log:\n%s", level, text, waitFor, b.String())
		}
	}
}

// testPKI is a Ferry CA and the controller's serving certificate. It is
// the minimum these tests need to enroll an agent; fetch's tests have a
// similar one.
type testPKI struct {
	ca     *pki.CA
	server tls.Certificate
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleController}, PublicKey: key.Public(), TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, server: tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}}
}

// enroll writes the identity `ferry-agent enroll` leaves for node n1 in
// group prod, received age ago with a certificate valid for ttl from then.
func (p *testPKI) enroll(t *testing.T, age, ttl time.Duration) (stateDir string, cert *x509.Certificate) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now().Add(-age)
	cert, err = p.ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: key.Public(), TTL: ttl, Now: issued})
	if err != nil {
		t.Fatal(err)
	}
	stateDir = t.TempDir()
	info := identity.Info{NodeID: "n1", Group: "prod", Controller: "127.0.0.1:7443", EnrolledAt: issued}
	if err := identity.Save(stateDir, info, key, cert, p.ca.Cert); err != nil {
		t.Fatal(err)
	}
	// The agent counts its certificate's age from when the file was written.
	if err := os.Chtimes(filepath.Join(stateDir, "node.crt"), issued, issued); err != nil {
		t.Fatal(err)
	}
	return stateDir, cert
}

// fakeController serves the agent's stream over an in-memory connection
// with real TLS. script decides what happens to each stream; without one,
// every stream is welcomed and handed to the test on streams.
type fakeController struct {
	ferryv1.UnimplementedAgentServiceServer
	script    func(s *agentStream) error
	renew     func(*ferryv1.RenewCertificateRequest) (*ferryv1.RenewCertificateResponse, error)
	streams   chan *agentStream
	opened    atomic.Int32
	downloads atomic.Int32
}

func (c *fakeController) Connect(stream grpc.BidiStreamingServer[ferryv1.ConnectRequest, ferryv1.ConnectResponse]) error {
	n := int(c.opened.Add(1)) - 1
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s := &agentStream{n: n, hello: first.GetHello(), stream: stream, msgs: make(chan *ferryv1.ConnectRequest, 1024), end: make(chan error, 1)}
	if p, ok := peer.FromContext(stream.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			s.cert = ti.State.PeerCertificates[0]
		}
	}
	if c.script != nil {
		return c.script(s)
	}
	return s.serve(c.streams)
}

// DownloadArtifact counts the downloads asked of this controller; it has
// no artifacts.
func (c *fakeController) DownloadArtifact(*ferryv1.DownloadArtifactRequest, grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error {
	c.downloads.Add(1)
	return status.Error(codes.NotFound, "no such artifact")
}

func (c *fakeController) RenewCertificate(_ context.Context, req *ferryv1.RenewCertificateRequest) (*ferryv1.RenewCertificateResponse, error) {
	if c.renew == nil {
		return nil, errors.New("renewal is not part of this test")
	}
	return c.renew(req)
}

// agentStream is one stream from the agent, seen from the controller.
type agentStream struct {
	n      int // 0 for the agent's first stream
	hello  *ferryv1.AgentHello
	cert   *x509.Certificate // what the agent presented
	stream grpc.BidiStreamingServer[ferryv1.ConnectRequest, ferryv1.ConnectResponse]
	msgs   chan *ferryv1.ConnectRequest // what the agent sent after its hello
	end    chan error                   // the test ends the stream with this

	updates []*ferryv1.JobUpdate // every job update read so far, in order
}

// welcome answers the hello; heartbeats after the first are an hour
// apart, so only the test's messages follow.
func (s *agentStream) welcome() error {
	return s.stream.Send(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Welcome{Welcome: &ferryv1.Welcome{
		HeartbeatInterval: durationpb.New(time.Hour), Group: "prod"}}})
}

// serve welcomes the agent, hands the stream to the test and relays what
// the agent sends until the test ends the stream or the agent closes it.
func (s *agentStream) serve(to chan<- *agentStream) error {
	if err := s.welcome(); err != nil {
		return err
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		defer close(s.msgs)
		for {
			m, err := s.stream.Recv()
			if err != nil {
				return
			}
			s.msgs <- m
		}
	}()
	to <- s
	select {
	case err := <-s.end:
		return err
	case <-closed:
		return nil
	}
}

func (s *agentStream) send(t *testing.T, m *ferryv1.ConnectResponse) {
	t.Helper()
	if err := s.stream.Send(m); err != nil {
		t.Fatalf("send to the agent: %v", err)
	}
}

// next returns the agent's next message.
func (s *agentStream) next(t *testing.T) *ferryv1.ConnectRequest {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatal("the agent closed its stream")
		}
		if u := m.GetJobUpdate(); u != nil {
			s.updates = append(s.updates, u)
		}
		return m
	case <-time.After(waitFor):
		t.Fatalf("no message from the agent within %v", waitFor)
		return nil
	}
}

// heartbeat reads up to the agent's next heartbeat: the agent sends one
// as soon as the stream is up.
func (s *agentStream) heartbeat(t *testing.T) {
	t.Helper()
	for {
		if s.next(t).GetHeartbeat() != nil {
			return
		}
	}
}

// result reads up to the final update of a job.
func (s *agentStream) result(t *testing.T, jobID string) *ferryv1.JobUpdate {
	t.Helper()
	for {
		u := s.next(t).GetJobUpdate()
		if u.GetJobId() == jobID && final(u.GetPhase()) {
			return u
		}
	}
}

// updatesOf returns the updates read so far for a job.
func (s *agentStream) updatesOf(jobID string) []*ferryv1.JobUpdate {
	var out []*ferryv1.JobUpdate
	for _, u := range s.updates {
		if u.GetJobId() == jobID {
			out = append(out, u)
		}
	}
	return out
}

// indexOf is the position of a job's first update with the phase among
// those read so far, -1 if none.
func (s *agentStream) indexOf(jobID string, phase ferryv1.JobPhase) int {
	for i, u := range s.updates {
		if u.GetJobId() == jobID && u.GetPhase() == phase {
			return i
		}
	}
	return -1
}

func final(p ferryv1.JobPhase) bool {
	switch p {
	case ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, ferryv1.JobPhase_JOB_PHASE_FAILED:
		return true
	}
	return false
}

// fakeFetcher stands in for the artifact downloader: each download waits
// until the test says how it ends.
type fakeFetcher struct {
	mu        sync.Mutex
	downloads map[string]*download
	closed    bool
}

// download is one artifact the agent asks for.
type download struct {
	started  chan struct{} // closed when the agent starts downloading it
	finish   chan fetched  // the test sends how the download ends
	released chan struct{} // closed when the job no longer holds the artifact
	calls    atomic.Int32
	once     sync.Once
	relOnce  sync.Once
}

type fetched struct {
	path string
	err  error
}

func (f *fakeFetcher) download(digest string) *download {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.downloads == nil {
		f.downloads = map[string]*download{}
	}
	d, ok := f.downloads[digest]
	if !ok {
		d = &download{started: make(chan struct{}), finish: make(chan fetched, 1), released: make(chan struct{})}
		if f.closed {
			d.finish <- fetched{err: errors.New("the test is over")}
		}
		f.downloads[digest] = d
	}
	return d
}

func (f *fakeFetcher) Ensure(ctx context.Context, digest string, size uint64, progress func(done, total uint64)) (string, error) {
	d := f.download(digest)
	d.calls.Add(1)
	d.once.Do(func() { close(d.started) })
	select {
	case r := <-d.finish:
		return r.path, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (f *fakeFetcher) Hold(digest string) func() {
	d := f.download(digest)
	return func() { d.relOnce.Do(func() { close(d.released) }) }
}

// close ends every download that is still waiting, so a failing test does
// not hold the agent's stop on a running job.
func (f *fakeFetcher) close() {
	f.mu.Lock()
	f.closed = true
	ds := make([]*download, 0, len(f.downloads))
	for _, d := range f.downloads {
		ds = append(ds, d)
	}
	f.mu.Unlock()
	for _, d := range ds {
		select {
		case d.finish <- fetched{err: errors.New("the test is over")}:
		default:
		}
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("%s did not happen within %v", what, waitFor)
	}
}

// testAgent is an agent enrolled as n1, on a fake clock, connected to a
// fake controller, downloading through a fake fetcher. Its reconnect
// waits are the test's: each delay Run picks arrives on waits, and the
// wait ends when the test sends on wake.
type testAgent struct {
	*Agent
	t       *testing.T
	pki     *testPKI
	cert    *x509.Certificate // the enrolled certificate
	root    string            // install root
	clock   *clocktest.Clock
	ctl     *fakeController
	peers   []*fakeController          // more controllers, at 127.0.0.2:7443, 127.0.0.3:7443, ...
	client  ferryv1.AgentServiceClient // what the fetcher was given
	fetcher *fakeFetcher
	logs    *logBuffer
	waits   chan time.Duration
	wake    chan time.Time
	done    chan error // Run's result
	stop    context.CancelFunc

	watchMu  sync.Mutex
	watches  []selfupdate.WatchSpec // the update watchdogs the agent started
	watchErr error                  // what starting one returns
}

// watchdogs are the update watchdogs the agent started.
func (ta *testAgent) watchdogs() []selfupdate.WatchSpec {
	ta.watchMu.Lock()
	defer ta.watchMu.Unlock()
	return append([]selfupdate.WatchSpec(nil), ta.watches...)
}

// agentOptions adjust a test agent before it is created.
type agentOptions struct {
	certTTL time.Duration // default 1h
	certAge time.Duration // how long ago the certificate was issued (default 0)
	rand    rand.Source   // default a seeded PCG
	script  func(s *agentStream) error
	config  func(*Config)
	// peers adds this many controllers (each with script) to the agent's
	// list, after the enrolled 127.0.0.1:7443.
	peers int
}

func newTestAgent(t *testing.T, o agentOptions) *testAgent {
	t.Helper()
	if o.certTTL == 0 {
		o.certTTL = time.Hour
	}
	if o.rand == nil {
		o.rand = rand.NewPCG(1, 2)
	}
	p := newPKI(t)
	stateDir, cert := p.enroll(t, o.certAge, o.certTTL)
	ta := &testAgent{t: t, pki: p, cert: cert, root: t.TempDir(), clock: clocktest.New(time.Now()),
		fetcher: &fakeFetcher{}, logs: newLogBuffer(),
		waits: make(chan time.Duration, 100), wake: make(chan time.Time)}
	listeners := map[string]*bufconn.Listener{}
	serve := func(addr string) *fakeController {
		ctl := &fakeController{script: o.script, streams: make(chan *agentStream, 16)}
		lis := bufconn.Listen(1 << 20)
		serverTLS := rpc.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &p.server, nil }, p.ca.Pool())
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
		ferryv1.RegisterAgentServiceServer(srv, ctl)
		go func() {
			// Serve returns nil once the cleanup's Stop ends it.
			if err := srv.Serve(lis); err != nil {
				t.Errorf("fake controller: serve: %v", err)
			}
		}()
		t.Cleanup(srv.Stop)
		listeners[addr] = lis
		return ctl
	}
	ta.ctl = serve("127.0.0.1:7443")
	var addrs []string
	for i := range o.peers {
		addr := fmt.Sprintf("127.0.0.%d:7443", i+2)
		ta.peers = append(ta.peers, serve(addr))
		addrs = append(addrs, addr)
	}

	cfg := Config{
		StateDir: stateDir, Root: ta.root,
		BackoffBase: time.Second, BackoffMax: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(ta.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    ta.clock.Now, Rand: rand.New(o.rand),
		NewFetcher: func(c ferryv1.AgentServiceClient) (Fetcher, error) {
			ta.client = c
			return ta.fetcher, nil
		},
		StartWatchdog: func(_ context.Context, s selfupdate.WatchSpec) error {
			ta.watchMu.Lock()
			defer ta.watchMu.Unlock()
			if ta.watchErr != nil {
				return ta.watchErr
			}
			ta.watches = append(ta.watches, s)
			return nil
		},
	}
	if len(addrs) > 0 {
		cfg.Controllers = append([]string{"127.0.0.1:7443"}, addrs...)
	}
	if o.config != nil {
		o.config(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	a.dialer = func(ctx context.Context, addr string) (net.Conn, error) {
		lis, ok := listeners[addr]
		if !ok {
			return nil, fmt.Errorf("dial tcp %s: connect: connection refused", addr)
		}
		return lis.DialContext(ctx)
	}
	a.after = func(d time.Duration) <-chan time.Time {
		ta.waits <- d
		return ta.wake
	}
	ta.Agent = a
	return ta
}

// run starts the agent; it is stopped when the test ends.
func (ta *testAgent) run() {
	ctx, cancel := context.WithCancel(context.Background())
	ta.stop, ta.done = cancel, make(chan error, 1)
	go func() { ta.done <- ta.Run(ctx) }()
	ta.t.Cleanup(func() {
		ta.fetcher.close()
		cancel()
		select {
		case err := <-ta.done:
			// A test that expects Run to fail checks it with result().
			ta.t.Logf("Run returned %v", err)
		case <-time.After(waitFor):
			ta.t.Errorf("the agent did not stop within %v", waitFor)
		}
	})
}

// stream returns the agent's next stream, once the agent has it up.
func (ta *testAgent) stream() *agentStream {
	ta.t.Helper()
	select {
	case s := <-ta.ctl.streams:
		s.heartbeat(ta.t)
		return s
	case <-time.After(waitFor):
		ta.t.Fatalf("the agent opened no stream within %v", waitFor)
		return nil
	}
}

// nextWait returns the delay of the agent's next reconnect wait.
func (ta *testAgent) nextWait() time.Duration {
	ta.t.Helper()
	select {
	case d := <-ta.waits:
		return d
	case err := <-ta.done:
		ta.t.Fatalf("Run ended (%v) instead of waiting to reconnect", err)
	case <-time.After(waitFor):
		ta.t.Fatalf("the agent did not wait to reconnect within %v", waitFor)
	}
	return 0
}

// redial ends the agent's current reconnect wait.
func (ta *testAgent) redial() {
	ta.t.Helper()
	select {
	case ta.wake <- time.Time{}:
	case <-time.After(waitFor):
		ta.t.Fatalf("the agent was not waiting to reconnect")
	}
}

// startTool sends the tool job on s and returns its download once the
// agent is running the job.
func (ta *testAgent) startTool(s *agentStream) *download {
	ta.t.Helper()
	dl := ta.fetcher.download(toolDigest)
	s.send(ta.t, jobMsg(toolJob(toolDigest)))
	waitClosed(ta.t, dl.started, "the tool's download")
	return dl
}

// result waits for Run to end and returns its error.
func (ta *testAgent) result() error {
	ta.t.Helper()
	select {
	case err := <-ta.done:
		ta.done <- err // for the cleanup
		return err
	case <-time.After(waitFor):
		ta.t.Fatalf("Run did not end within %v", waitFor)
		return nil
	}
}

func (ta *testAgent) file(path string) (string, bool) {
	data, err := os.ReadFile(filepath.Join(ta.root, path))
	return string(data), err == nil
}

// Jobs as the controller sends them.

func jobMsg(j *ferryv1.Job) *ferryv1.ConnectResponse {
	return &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: j}}
}

func cancelMsg(jobID string) *ferryv1.ConnectResponse {
	return &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Cancel{Cancel: &ferryv1.JobCancel{JobId: jobID}}}
}

// fileJob installs package <id>@1 that writes one file.
func fileJob(id, path, content string) *ferryv1.Job {
	return &ferryv1.Job{Id: id, RolloutId: "r1", Kind: ferryv1.JobKind_JOB_KIND_INSTALL, Package: &ferryv1.Package{
		Name: id, Version: "1", Steps: []*ferryv1.Step{{Kind: &ferryv1.Step_File{File: &ferryv1.FileStep{Path: path, Content: []byte(content), Mode: 0o644}}}},
	}}
}

// toolJob installs tool@1.0 from an artifact into /opt/tool.
func toolJob(digest string) *ferryv1.Job {
	return &ferryv1.Job{Id: "tool", RolloutId: "r1", Kind: ferryv1.JobKind_JOB_KIND_INSTALL, Package: &ferryv1.Package{
		Name: "tool", Version: "1.0", Artifact: &ferryv1.ArtifactRef{Digest: digest, Name: "tool-1.0.tar.gz", Size: 100},
		Steps: []*ferryv1.Step{{Kind: &ferryv1.Step_Archive{Archive: &ferryv1.ArchiveStep{Dest: "/opt/tool", Format: "tar.gz"}}}},
	}}
}

// toolArchive writes the tool's tar.gz (bin/tool printing its version)
// and returns its path.
func toolArchive(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	body := "#!/bin/sh\necho tool 1.0\n"
	if err := tw.WriteHeader(&tar.Header{Name: "bin/tool", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tool-1.0.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

var toolDigest = "sha256:" + strings.Repeat("7", 64)
