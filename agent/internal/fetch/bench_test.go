package fetch

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/faultproxy"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/proctest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// genBlob is size pseudo-random bytes computed from their offset, so a
// gigabyte can be served without being held: block i comes from ChaCha8
// keyed by (seed, i).
type genBlob struct {
	seed byte
	size int64
}

const genBlock = 64 << 10

func (g genBlob) Size() int64 { return g.size }

func (g genBlob) ReadAt(p []byte, off int64) (int, error) {
	block := make([]byte, genBlock)
	n := 0
	for n < len(p) && off < g.size {
		var key [32]byte
		key[0] = g.seed
		binary.LittleEndian.PutUint64(key[8:], uint64(off/genBlock))
		rand.NewChaCha8(key).Read(block)
		c := copy(p[n:], block[off%genBlock:min(genBlock, g.size-off/genBlock*genBlock)])
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (g genBlob) digest() string {
	h := sha256.New()
	_, _ = io.CopyBuffer(h, io.NewSectionReader(g, 0, g.size), make([]byte, 1<<20)) // genBlob and hashes never fail
	return sha256digest.Prefix + hex.EncodeToString(h.Sum(nil))
}

// benchServerEnv makes the test binary a fake controller in a process of
// its own, so the agent side's RSS is measured alone.
const benchServerEnv = "FERRY_FETCH_BENCHSERVER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(benchServerEnv); dir != "" {
		if err := runBenchServer(dir); err != nil {
			fmt.Fprintln(os.Stderr, "benchmark server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runBenchServer(dir string) error {
	serverTLS, err := pkitest.ReadServerTLS(dir)
	if err != nil {
		return err
	}
	blob, err := os.ReadFile(filepath.Join(dir, "blob"))
	if err != nil {
		return err
	}
	var g genBlob
	var digest string
	if _, err := fmt.Sscanf(string(blob), "%d %d %s", &g.seed, &g.size, &digest); err != nil {
		return err
	}
	fake := newFake()
	fake.serveAs(digest, g)
	srv := rpc.NewServer(rpc.ServerOptions{TLS: serverTLS, Logger: slog.New(slog.DiscardHandler)})
	ferryv1.RegisterAgentServiceServer(srv, fake)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(lis) }() // returns at Stop
	defer srv.Stop()
	fmt.Printf("addr %s\n", lis.Addr())
	// Serve until the benchmark closes stdin.
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// BenchmarkEnsureMemory1GiB downloads a generated 1 GiB artifact with a
// Fetcher from a fake controller in a child process and reports how far
// this process's RSS rose above its level before (VmHWM after resetting it
// with /proc/self/clear_refs), and the throughput to a verified file on
// disk. It fails when RSS grows by 64 MiB or more.
func BenchmarkEnsureMemory1GiB(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc/self/status")
	}
	g := genBlob{seed: 9, size: 1 << 30}
	digest := g.digest()
	p := pkitest.New(b)
	dir := b.TempDir()
	p.WriteServerFiles(b, dir)
	if err := os.WriteFile(filepath.Join(dir, "blob"), fmt.Appendf(nil, "%d %d %s", g.seed, g.size, digest), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// Closing stdin stops the server; how it exits is not measured.
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	var addr string
	if !lines.Scan() {
		b.Fatalf("server did not start: %v", lines.Err())
	}
	if _, err := fmt.Sscanf(lines.Text(), "addr %s", &addr); err != nil {
		b.Fatalf("server said %q: %v", lines.Text(), err)
	}
	client := dial(b, p, addr)

	base := proctest.ResetPeak()
	b.ResetTimer()
	elapsed := timeEnsures(b, client, digest, uint64(g.size), nil)
	b.StopTimer()
	_, peak := proctest.RSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	const mib = 1 << 20
	growth := float64(peak-base) / mib
	b.ReportMetric(growth, "agent-RSS-growth-MiB")
	b.ReportMetric(float64(ms.HeapSys)/mib, "agent-HeapSys-MiB")
	b.ReportMetric(float64(g.size)*float64(b.N)/1e6/elapsed.Seconds(), "ensure-MB/s")
	b.Logf("agent RSS %.1f MiB before, peak %.1f MiB", float64(base)/mib, float64(peak)/mib)
	if growth >= 64 {
		b.Fatalf("agent RSS grew by %.1f MiB fetching 1 GiB; the limit is 64 MiB", growth)
	}
}

// BenchmarkEnsure256MiB compares, in one run, a Fetcher's download of a
// 256 MiB artifact (staging file, read-back verification, cache) with
// draining the same stream into nothing: the cost of making it durable
// and verified.
func BenchmarkEnsure256MiB(b *testing.B) {
	g := genBlob{seed: 3, size: 256 << 20}
	digest := g.digest()
	p := pkitest.New(b)
	fake := newFake()
	fake.serveAs(digest, g)
	client := dial(b, p, serve(b, p, fake))
	var ensure, stream time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		s, err := client.DownloadArtifact(context.Background(), &ferryv1.DownloadArtifactRequest{Digest: digest})
		if err != nil {
			b.Fatal(err)
		}
		var m ferryv1.DownloadArtifactResponse
		for {
			m.Reset()
			if err := s.RecvMsg(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
		stream += time.Since(start)

		f := newFetcher(b, filepath.Join(b.TempDir(), fmt.Sprint(i)), client, nil)
		start = time.Now()
		path, err := f.Ensure(context.Background(), digest, uint64(g.size), nil)
		ensure += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	total := float64(g.size) * float64(b.N) / 1e6
	b.ReportMetric(total/stream.Seconds(), "stream-MB/s")
	b.ReportMetric(total/ensure.Seconds(), "ensure-MB/s")
	b.ReportMetric(stream.Seconds()/ensure.Seconds(), "ensure/stream")
}

// BenchmarkEnsureOverResettingLink downloads a generated 100 MiB artifact
// through a proxy that resets every connection after a fixed number of
// bytes and caps the rate at 25 MiB/s, with the agent's own dial options,
// (and its broken-link connections) and reports the bytes the controller
// served per artifact byte and the time against the ideal (the size at
// the capped rate). The goals: at most 1.3× the bytes over a 512
// KiB-reset link, within 2× the ideal time over a 1.5 MiB one. What a
// broken stream loses is the chunk it was in plus what gRPC had queued
// and the HTTP/2 window had in flight, so the bytes served stay above what
// the chunk size alone would suggest.
func BenchmarkEnsureOverResettingLink(b *testing.B) {
	const rate = 25 << 20
	g := genBlob{seed: 5, size: 100 << 20}
	digest := g.digest()
	for _, link := range []struct {
		name  string
		reset int64
	}{
		{"reset-512KiB", 512 << 10},
		{"reset-1.5MiB", 3 << 19},
	} {
		b.Run(link.name, func(b *testing.B) {
			p := pkitest.New(b)
			fake := newFake()
			fake.serveAs(digest, g)
			proxy := faultproxy.New(b, faultproxy.Config{Target: serve(b, p, fake), Faults: faultproxy.ResetEvery(link.reset), Rate: rate})
			opts := rpc.DialOptions(p.ClientTLS(p.Agent))
			conn, err := grpc.NewClient(proxy.Addr(), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			brokenLink := brokenLinks(b, proxy.Addr(), opts)
			client := ferryv1.NewAgentServiceClient(conn)
			b.ResetTimer()
			elapsed := timeEnsures(b, client, digest, uint64(g.size), func(c *Config) {
				c.BackoffBase, c.BackoffMax = 0, 0 // the agent's defaults
				c.BrokenLink = brokenLink
			})
			b.StopTimer()
			fake.idle(b)
			ideal := time.Duration(float64(g.size) / rate * float64(time.Second) * float64(b.N))
			served := float64(fake.served.Load()) / float64(g.size) / float64(b.N)
			b.ReportMetric(served, "served/byte")
			b.ReportMetric(elapsed.Seconds()/ideal.Seconds(), "time/ideal")
			b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/download")
			b.Logf("%s: 100 MiB in %.1fs (ideal %.1fs at 25 MiB/s), %.2f× the bytes served, %d streams over %d connections",
				link.name, elapsed.Seconds()/float64(b.N), ideal.Seconds()/float64(b.N), served, fake.streams.Load(), proxy.Conns())
		})
	}
}

// timeEnsures downloads the artifact b.N times, each with a new Fetcher
// on a state dir of its own, and returns the time Ensure took in all.
func timeEnsures(b *testing.B, client ferryv1.AgentServiceClient, digest string, size uint64, mod func(*Config)) time.Duration {
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		f := newFetcher(b, filepath.Join(b.TempDir(), fmt.Sprint(i)), client, mod)
		start := time.Now()
		path, err := f.Ensure(context.Background(), digest, size, nil)
		elapsed += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			b.Fatal(err)
		}
	}
	return elapsed
}
