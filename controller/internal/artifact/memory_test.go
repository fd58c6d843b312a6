package artifact_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	"github.com/ferrydeploy/ferry/controller/internal/server"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/proctest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// memServerEnv makes the test binary a controller for the memory
// benchmark, so the controller's RSS is measured in a process of its own.
const memServerEnv = "FERRY_ARTIFACT_MEMSERVER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(memServerEnv); dir != "" {
		if err := runMemServer(dir); err != nil {
			fmt.Fprintln(os.Stderr, "memory benchmark server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMemServer serves the artifact services from dir with the PKI the
// benchmark wrote there; it prints its address and RSS, and its peak RSS
// when its stdin closes.
func runMemServer(dir string) error {
	serverTLS, err := pkitest.ReadServerTLS(dir)
	if err != nil {
		return err
	}
	db, err := store.Open(filepath.Join(dir, "ferry.db"), store.Options{Create: true})
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := artifact.Open(artifact.Config{Dir: filepath.Join(dir, "artifacts"), Records: db, Logger: quietLogger()})
	if err != nil {
		return err
	}
	srv := rpc.NewServer(rpc.ServerOptions{TLS: serverTLS, Logger: quietLogger()})
	server.Register(srv, &server.Deps{Store: db, Artifacts: st, Downloads: artifact.NewDownloader(artifact.DownloaderConfig{Store: st, Logger: quietLogger()}), JobArtifacts: anyJob{}, Logger: quietLogger()})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			fmt.Fprintln(os.Stderr, "memory benchmark server: serve:", err)
		}
	}()
	defer srv.Stop()
	base := proctest.ResetPeak()
	fmt.Printf("addr %s base %d\n", lis.Addr(), base)
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		return fmt.Errorf("wait for stdin to close: %w", err)
	}
	rss, hwm := proctest.RSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("peak %d rss %d heapsys %d\n", hwm, rss, ms.HeapSys)
	return nil
}

// BenchmarkMemory1GiB pushes a generated 1 GiB artifact (streamed, never
// held) to a controller running in a child process, downloads it back,
// and reports how far each process's RSS rose above its level before the
// transfer (VmHWM after resetting it with /proc/self/clear_refs). It fails
// when either side grows by 64 MiB or more. The client side is this
// process: ferryctl's push path and an agent's download stream.
func BenchmarkMemory1GiB(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc/self/status")
	}
	const size = 1 << 30
	p := pkitest.New(b)
	dir := b.TempDir()
	p.WriteServerFiles(b, dir)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), memServerEnv+"="+dir)
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
	defer func() { _ = cmd.Process.Kill() }() // fails once the server has exited, as it should
	lines := bufio.NewScanner(stdout)
	var addr string
	var srvBase int64
	if !lines.Scan() {
		b.Fatalf("server did not start: %v", lines.Err())
	}
	if _, err := fmt.Sscanf(lines.Text(), "addr %s base %d", &addr, &srvBase); err != nil {
		b.Fatalf("server said %q: %v", lines.Text(), err)
	}
	dialAs := func(c tls.Certificate) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, rpc.DialOptions(p.ClientTLS(c))...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return conn
	}
	admin, agent := ferryv1.NewArtifactServiceClient(dialAs(p.Admin)), ferryv1.NewAgentServiceClient(dialAs(p.Agent))
	ctx := context.Background()

	cliBase := proctest.ResetPeak()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := io.LimitReader(rand.NewChaCha8([32]byte{byte(i), 'm', 'e', 'm'}), size)
		resp, err := pushclient.Push(ctx, admin, &ferryv1.PushArtifactHeader{Name: "mem", Version: fmt.Sprint(i), Size: size}, body, nil)
		if err != nil {
			b.Fatal(err)
		}
		s, err := agent.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: resp.Artifact.Digest})
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		var n int64
		var m ferryv1.DownloadArtifactResponse
		for {
			m.Reset()
			if err := s.RecvMsg(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				b.Fatal(err)
			}
			h.Write(m.Data)
			n += int64(len(m.Data))
		}
		if got := sha256digest.Prefix + hex.EncodeToString(h.Sum(nil)); n != size || got != resp.Artifact.Digest {
			b.Fatalf("downloaded %d bytes hashing to %s, want %d bytes of %s", n, got, size, resp.Artifact.Digest)
		}
	}
	b.StopTimer()
	_, cliPeak := proctest.RSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	stdin.Close()
	if !lines.Scan() {
		b.Fatalf("server ended without a report: %v", lines.Err())
	}
	var srvPeak, srvRSS, srvHeapSys int64
	if _, err := fmt.Sscanf(lines.Text(), "peak %d rss %d heapsys %d", &srvPeak, &srvRSS, &srvHeapSys); err != nil {
		b.Fatalf("server said %q: %v", lines.Text(), err)
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("server: %v", err)
	}

	const mib = 1 << 20
	srvGrowth, cliGrowth := float64(srvPeak-srvBase)/mib, float64(cliPeak-cliBase)/mib
	b.ReportMetric(srvGrowth, "controller-RSS-growth-MiB")
	b.ReportMetric(float64(srvHeapSys)/mib, "controller-HeapSys-MiB")
	b.ReportMetric(cliGrowth, "client-RSS-growth-MiB")
	b.ReportMetric(float64(ms.HeapSys)/mib, "client-HeapSys-MiB")
	b.Logf("controller RSS %0.1f MiB before, peak %0.1f MiB; client RSS %0.1f MiB before, peak %0.1f MiB",
		float64(srvBase)/mib, float64(srvPeak)/mib, float64(cliBase)/mib, float64(cliPeak)/mib)
	if srvGrowth >= 64 || cliGrowth >= 64 {
		b.Fatalf("RSS grew by %.1f MiB (controller) and %.1f MiB (client) moving 1 GiB; the limit is 64 MiB", srvGrowth, cliGrowth)
	}
}
