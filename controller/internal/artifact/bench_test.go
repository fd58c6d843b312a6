package artifact_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

// writeRandomFile writes n pseudo-random bytes to path in chunks (never
// the whole file in memory).
func writeRandomFile(tb testing.TB, path string, n int64, seed byte) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.NewChaCha8([32]byte{seed}), n); err != nil {
		tb.Fatal(err)
	}
}

// bareTLSCopy sends the file over a plain TLS 1.3 connection (the same
// certificates, no gRPC) with io.Copy on both ends: the reference.
func bareTLSCopy(tb testing.TB, p *pkitest.PKI, path string) (int64, time.Duration) {
	tb.Helper()
	srvConf := p.ServerTLS()
	srvConf.ClientAuth = tls.RequireAndVerifyClientCert
	lis, err := tls.Listen("tcp", "127.0.0.1:0", srvConf)
	if err != nil {
		tb.Fatal(err)
	}
	defer lis.Close()
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		f, err := os.Open(path)
		if err != nil {
			return
		}
		defer f.Close()
		_, _ = io.Copy(c, f) // the client checks what arrived
	}()
	start := time.Now()
	c, err := tls.Dial("tcp", lis.Addr().String(), p.ClientTLS(p.Agent))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		tb.Fatal(err)
	}
	return n, time.Since(start)
}

// drain downloads a digest and throws the bytes away, as fast as the
// stream delivers them.
func drain(ctx context.Context, c ferryv1.AgentServiceClient, digest string) (int64, error) {
	s, err := c.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest})
	if err != nil {
		return 0, err
	}
	var n int64
	var m ferryv1.DownloadArtifactResponse
	for {
		m.Reset()
		if err := s.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		n += int64(len(m.Data))
	}
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// BenchmarkTransfer256MiB pushes and downloads a 256 MiB artifact over
// real mTLS on loopback and, in the same run, copies the same bytes over a
// bare TLS 1.3 connection. It reports MB/s for each (means over b.N) and
// the ratios the issue sets goals for: download/bare >= 0.6, and four
// concurrent downloads (four agents, four connections) together faster
// than one. Both ends run in this process and share its CPUs, so on a
// small machine one download already keeps most cores busy encrypting and
// decrypting, and four cannot gain much over it.
func BenchmarkTransfer256MiB(b *testing.B) {
	const size = 256 << 20
	h := newHarness(b, harnessOpts{maxDownloads: 8})
	path := filepath.Join(b.TempDir(), "artifact.bin")
	writeRandomFile(b, path, size, 42)
	ctx := context.Background()
	agent := ferryv1.NewAgentServiceClient(h.agent)
	// Four agents: four connections, as four nodes would have.
	var agents [4]ferryv1.AgentServiceClient
	for i := range agents {
		agents[i] = h.dialAgent(fmt.Sprintf("bench-%d", i))
	}

	var bare, push, one, four time.Duration
	var bareCPU, oneCPU time.Duration
	var digest string
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c0 := cpuTime()
		n, d := bareTLSCopy(b, h.pki, path)
		if n != size {
			b.Fatalf("bare TLS copied %d bytes", n)
		}
		bare += d
		bareCPU += cpuTime() - c0

		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		resp, err := pushclient.Push(ctx, h.artifacts(), &ferryv1.PushArtifactHeader{Name: "bench", Version: "1", Size: size}, f, nil)
		push += time.Since(start)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		digest = resp.Artifact.Digest

		start, c0 = time.Now(), cpuTime()
		if n, err := drain(ctx, agent, digest); err != nil || n != size {
			b.Fatalf("download: %d bytes, %v", n, err)
		}
		one += time.Since(start)
		oneCPU += cpuTime() - c0

		start = time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for _, c := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch n, err := drain(ctx, c, digest); {
				case err != nil:
					errs <- fmt.Errorf("download: %d bytes: %w", n, err)
				case n != size:
					errs <- fmt.Errorf("download: %d bytes, want %d", n, size)
				}
			}()
		}
		wg.Wait()
		four += time.Since(start)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	total := int64(size) * int64(b.N)
	b.ReportMetric(mbps(total, bare), "bare-TLS-MB/s")
	b.ReportMetric(mbps(total, push), "push-MB/s")
	b.ReportMetric(mbps(total, one), "download-MB/s")
	b.ReportMetric(mbps(4*total, four), "4-downloads-MB/s")
	b.ReportMetric(bare.Seconds()/one.Seconds(), "download/bare")
	b.ReportMetric(bare.Seconds()/push.Seconds(), "push/bare")
	b.ReportMetric(4*one.Seconds()/four.Seconds(), "4-downloads/one")
	// CPU time of both ends per 256 MiB: on a busy machine the wall-clock
	// figures swing with other load, this ratio much less.
	b.ReportMetric(float64(bareCPU.Milliseconds())/float64(b.N), "bare-TLS-CPU-ms")
	b.ReportMetric(float64(oneCPU.Milliseconds())/float64(b.N), "download-CPU-ms")
	b.ReportMetric(bareCPU.Seconds()/oneCPU.Seconds(), "download/bare-by-CPU")
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
