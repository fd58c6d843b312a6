package archive

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkExtract extracts a generated tar.gz of about 50 MB in 2000
// files, and reports the same extraction by `tar -xzf` for comparison.
func BenchmarkExtract(b *testing.B) {
	src := filepath.Join(b.TempDir(), "gen.tar.gz")
	writeGenerated(b, src, 2000, 25<<10)
	benchAgainstTar(b, src, 0)
}

// BenchmarkExtractToolchain extracts a tar.gz of the local Go toolchain
// (about 250 MB unpacked, as the Go release tarball) and compares it with
// `tar -xzf` of the same file in the same run. Building the tarball takes
// a few seconds; it is skipped with -short.
func BenchmarkExtractToolchain(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a toolchain-sized tarball")
	}
	src := filepath.Join(b.TempDir(), "go.tar.gz")
	writeTree(b, src, goroot(b), "go")
	benchAgainstTar(b, src, 1)
}

// goroot is the GOROOT of the go command on PATH, where `go test` puts
// the toolchain that runs it first.
func goroot(b *testing.B) string {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Skipf("go env GOROOT: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func benchAgainstTar(b *testing.B, src string, strip int) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		b.Fatal("tar not installed")
	}
	st, _ := os.Stat(src)
	b.SetBytes(st.Size())
	work := b.TempDir()
	var ferry, gnu time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		dest := filepath.Join(work, fmt.Sprintf("ferry-%d", n))
		if err := os.Mkdir(dest, 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := Extract(context.Background(), src, dest, Options{MaxBytes: 8 << 30, MaxEntries: 1 << 20, StripComponents: strip}); err != nil {
			b.Fatal(err)
		}
		ferry += time.Since(start)

		b.StopTimer()
		tdest := filepath.Join(work, fmt.Sprintf("tar-%d", n))
		if err := os.Mkdir(tdest, 0o755); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		cmd := exec.Command(tarBin, "-xzf", src, "-C", tdest, fmt.Sprintf("--strip-components=%d", strip))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("tar: %v: %s", err, out)
		}
		gnu += time.Since(start)
		if err := errors.Join(os.RemoveAll(dest), os.RemoveAll(tdest)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(ferry.Milliseconds())/float64(b.N), "ferry-ms/op")
	b.ReportMetric(float64(gnu.Milliseconds())/float64(b.N), "tar-ms/op")
	b.ReportMetric(float64(ferry)/float64(gnu), "ferry/tar")
}

// writeGenerated writes a tar.gz of files with compressible, non-trivial
// content (like source and binaries), spread over directories.
func writeGenerated(b *testing.B, dst string, files, size int) {
	f, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	rng := rand.New(rand.NewSource(1))
	words := []string{"func ", "return ", "err ", "nil", "{\n", "}\n", "if ", "package ", "x := ", "0x1f ", "\t"}
	buf := make([]byte, 0, size)
	for k := 0; k < files; k++ {
		if k%100 == 0 {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("pkg/d%d/", k/100), Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				b.Fatal(err)
			}
		}
		buf = buf[:0]
		for len(buf) < size {
			if rng.Intn(8) == 0 {
				buf = append(buf, byte(rng.Intn(256)))
			} else {
				buf = append(buf, words[rng.Intn(len(words))]...)
			}
		}
		buf = buf[:size]
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("pkg/d%d/f%d.go", k/100, k), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := errors.Join(tw.Close(), zw.Close()); err != nil {
		b.Fatal(err)
	}
}

// writeTree writes a tar.gz of the directory src under the name prefix.
func writeTree(b *testing.B, dst, src, prefix string) {
	f, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(filepath.Join(prefix, rel))
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			r, err := os.Open(p)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(tw, r)
			return err
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	tw.Close()
	zw.Close()
}

// BenchmarkExtractToolchainZstd extracts the tar.zst form of the local Go
// toolchain (what agents download when the controller transcoded it) into
// a tmpfs (/dev/shm when there is one) and compares it with `zstd -dc |
// tar -x` of the same file in the same run, in wall time and in CPU time
// (user + system, the extracting process's or the pipeline's). Skipped
// with -short, or without the zstd command.
func BenchmarkExtractToolchainZstd(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a toolchain-sized tarball")
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		b.Skip("zstd not installed")
	}
	dir := b.TempDir()
	gz := filepath.Join(dir, "go.tar.gz")
	writeTree(b, gz, goroot(b), "go")
	zst := filepath.Join(dir, "go.tar.zst")
	src, err := os.Open(gz)
	if err != nil {
		b.Fatal(err)
	}
	dst, err := os.Create(zst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Transcode(context.Background(), src, "go.tar.gz", dst); err != nil {
		b.Fatal(err)
	}
	_ = src.Close()
	if err := dst.Close(); err != nil {
		b.Fatal(err)
	}
	shm := "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		shm = ""
	}
	work, err := os.MkdirTemp(shm, "ferry-bench-zst1-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(work) })
	st, _ := os.Stat(zst)
	b.SetBytes(st.Size())
	var ferry, gnu, ferryCPU, gnuCPU time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		dest := filepath.Join(work, fmt.Sprintf("ferry-%d", n))
		if err := os.Mkdir(dest, 0o755); err != nil {
			b.Fatal(err)
		}
		cpu0 := cpuTime(syscall.RUSAGE_SELF)
		start := time.Now()
		f, err := os.Open(zst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ExtractStream(context.Background(), f, dest, Options{Format: FormatTarZst, MaxBytes: 8 << 30, MaxEntries: 1 << 20, StripComponents: 1}); err != nil {
			b.Fatal(err)
		}
		_ = f.Close()
		ferry += time.Since(start)
		ferryCPU += cpuTime(syscall.RUSAGE_SELF) - cpu0

		b.StopTimer()
		tdest := filepath.Join(work, fmt.Sprintf("tar-%d", n))
		if err := os.Mkdir(tdest, 0o755); err != nil {
			b.Fatal(err)
		}
		cpu0 = cpuTime(syscall.RUSAGE_CHILDREN)
		start = time.Now()
		cmd := exec.Command("sh", "-c", `zstd -dc "$1" | tar -x -C "$2" --strip-components=1`, "sh", zst, tdest)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("zstd | tar: %v: %s", err, out)
		}
		gnu += time.Since(start)
		gnuCPU += cpuTime(syscall.RUSAGE_CHILDREN) - cpu0
		if err := errors.Join(os.RemoveAll(dest), os.RemoveAll(tdest)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(ferry.Milliseconds())/float64(b.N), "ferry-ms/op")
	b.ReportMetric(float64(gnu.Milliseconds())/float64(b.N), "zstdtar-ms/op")
	b.ReportMetric(float64(ferryCPU.Milliseconds())/float64(b.N), "ferry-cpu-ms/op")
	b.ReportMetric(float64(gnuCPU.Milliseconds())/float64(b.N), "zstdtar-cpu-ms/op")
	b.ReportMetric(float64(ferry)/float64(gnu), "ferry/zstdtar")
	b.ReportMetric(float64(ferryCPU)/float64(gnuCPU), "ferry/zstdtar-cpu")
}

// cpuTime is the user and system time of who (RUSAGE_SELF or
// RUSAGE_CHILDREN, the children waited for).
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
