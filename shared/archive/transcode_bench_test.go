package archive

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// BenchmarkZstdToolchain transcodes a tar.gz of the local Go toolchain
// into tar.zst, as the controller does at push, then extracts each form
// eight times at once into a tmpfs (/dev/shm when there is one), as eight
// agents on one machine do: the figures that chose the codec settings in
// transcode.go. Skipped with -short.
func BenchmarkZstdToolchain(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a toolchain-sized tarball")
	}
	dir := b.TempDir()
	gz := filepath.Join(dir, "go.tar.gz")
	writeTree(b, gz, goroot(b), "go")
	zst := filepath.Join(dir, "go.tar.zst")
	b.Run("transcode", func(b *testing.B) {
		for n := 0; n < b.N; n++ {
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
		}
		gs, _ := os.Stat(gz)
		zs, _ := os.Stat(zst)
		b.ReportMetric(float64(gs.Size())/(1<<20), "gz-MiB")
		b.ReportMetric(float64(zs.Size())/(1<<20), "zst-MiB")
	})
	shm := "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		shm = ""
	}
	for _, c := range []struct{ name, src, format string }{{"gz", gz, FormatTarGz}, {"zst", zst, FormatTarZst}} {
		b.Run("extract8/"+c.name, func(b *testing.B) {
			for n := 0; n < b.N; n++ {
				root, err := os.MkdirTemp(shm, "ferry-bench-zstd-")
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				var wg sync.WaitGroup
				errs := make([]error, 8)
				for i := range errs {
					dest := filepath.Join(root, fmt.Sprint(i))
					if err := os.Mkdir(dest, 0o755); err != nil {
						b.Fatal(err)
					}
					wg.Go(func() {
						f, err := os.Open(c.src)
						if err != nil {
							errs[i] = err
							return
						}
						defer f.Close()
						_, errs[i] = ExtractStream(context.Background(), f, dest, Options{Format: c.format, MaxBytes: 8 << 30, MaxEntries: 1 << 20, StripComponents: 1})
					})
				}
				wg.Wait()
				b.ReportMetric(time.Since(start).Seconds(), "wall-s")
				b.StopTimer()
				if err := os.RemoveAll(root); err != nil {
					b.Fatal(err)
				}
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
		})
	}
}
