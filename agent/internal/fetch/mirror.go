package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// Site-local mirrors (the controller's package mirror): a job names the
// URL its artifact has on the mirror of the node's group. EnsureMirrored
// tries each before the controller's stream; what a mirror serves is
// trusted for nothing: the whole file is hashed from disk and installed
// into the cache only when it matches the digest. A mirror that is down,
// slow (no bytes for StallTimeout, or slower than mirrorMinRate), answers
// with an error or serves other bytes is noted in the job's log and the
// artifact comes from the controller as without a mirror.

// mirrorMinRate is the slowest average a mirror may deliver after its
// first mirrorGrace: a site mirror slower than a WAN link is of no use.
const (
	mirrorMinRate = 1 << 20 // bytes a second
	mirrorGrace   = 30 * time.Second
)

// errMismatch marks a mirror that served other bytes.
var errMismatch = errors.New("bytes do not match the digest")

// EnsureMirrored is Ensure, trying the mirrors first when the artifact is
// not cached. note writes a line to the job's log.
func (f *Fetcher) EnsureMirrored(ctx context.Context, digest string, size uint64, mirrors []*ferryv1.MirrorSource, note func(string), progress func(done, total uint64)) (string, error) {
	if _, cached := f.Path(digest); !cached && len(mirrors) > 0 {
		if err := f.fromMirrors(ctx, digest, size, mirrors, note, progress); err != nil {
			return "", err
		}
	}
	return f.Ensure(ctx, digest, size, progress)
}

// fromMirrors installs the artifact from the first mirror that serves it
// intact. Only the caller's end is an error; a mirror's failure is noted.
func (f *Fetcher) fromMirrors(ctx context.Context, digest string, size uint64, mirrors []*ferryv1.MirrorSource, note func(string), progress func(done, total uint64)) error {
	h, err := sha256digest.Parse(digest)
	if err != nil {
		return fmt.Errorf("artifact %w", err)
	}
	release := f.Hold(digest)
	defer release()
	unlock, err := f.lock(ctx, h)
	if err != nil {
		return err
	}
	defer unlock()
	if _, cached := f.Path(digest); cached {
		return nil // fetched meanwhile
	}
	if size > 0 {
		if err := f.checkRoom(digest, size); err != nil {
			return nil // the controller's path reports it, and keeps its partial
		}
	}
	for _, m := range mirrors {
		start := time.Now()
		n, err := f.mirrorGet(ctx, h, size, m, progress)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			note(fmt.Sprintf("fetched %s from the mirror %s (%s in %.1fs), digest verified", digest, m.GetUrl(), bytesize.IEC(n), time.Since(start).Seconds()))
			f.log.Info("artifact fetched from a mirror", "artifact", digest, "mirror", m.GetUrl(), "size", n)
			return nil
		}
		what := "failed"
		if errors.Is(err, errMismatch) {
			what = "served wrong bytes, discarded"
		}
		note(fmt.Sprintf("mirror %s %s: %v; fetching from the controller", m.GetUrl(), what, err))
		f.log.Warn("artifact mirror failed; falling back", "artifact", digest, "mirror", m.GetUrl(), "err", err)
	}
	return nil
}

// mirrorGet downloads one mirror's copy to a staging file, hashes it from
// disk and, when it matches, moves it into the cache.
func (f *Fetcher) mirrorGet(ctx context.Context, h string, size uint64, m *ferryv1.MirrorSource, progress func(done, total uint64)) (uint64, error) {
	client, err := mirrorClient(m.GetCaBundle(), f.cfg.StallTimeout)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.GetUrl(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := client.Do(req)
	if err != nil {
		return 0, mirrorErr(ctx, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %s", resp.Status)
	}
	if size > 0 && resp.ContentLength >= 0 && uint64(resp.ContentLength) != size {
		return 0, fmt.Errorf("%w: it announced %d bytes, the artifact has %d", errMismatch, resp.ContentLength, size)
	}
	path := filepath.Join(f.stageDir, h+".mirror")
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	installed := false
	defer func() {
		_ = file.Close()
		if !installed {
			_ = os.Remove(path)
		}
	}()
	n, err := f.mirrorCopy(cancel, file, resp.Body, size, progress)
	if err != nil {
		return n, mirrorErr(ctx, err)
	}
	if size > 0 && n != size {
		return n, fmt.Errorf("%w: it served %d bytes, the artifact has %d", errMismatch, n, size)
	}
	if err := file.Sync(); err != nil {
		return n, err
	}
	// Hashed as the bytes lie on disk, as the controller's downloads are.
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return n, err
	}
	hash := sha256.New()
	if _, err := io.Copy(hash, file); err != nil {
		return n, err
	}
	if got := sha256digest.Format(hash.Sum(nil)); got != sha256digest.Prefix+h {
		return n, fmt.Errorf("%w: got %s, want %s%s", errMismatch, got, sha256digest.Prefix, h)
	}
	// The verified file takes the place of any partial download from the
	// controller, and goes into the cache as that would.
	if err := os.Rename(path, f.stagePath(h)); err != nil {
		return n, err
	}
	installed = true
	if err := f.install(h); err != nil {
		return n, err
	}
	f.collect()
	return n, nil
}

// mirrorCopy writes body to file, at most size bytes (0: unbounded), and
// ends the request when no bytes arrive for StallTimeout or the average
// falls below mirrorMinRate after mirrorGrace.
func (f *Fetcher) mirrorCopy(cancel context.CancelCauseFunc, file *os.File, body io.Reader, size uint64, progress func(done, total uint64)) (uint64, error) {
	stall := time.AfterFunc(f.cfg.StallTimeout, func() {
		cancel(fmt.Errorf("no bytes for %v", f.cfg.StallTimeout))
	})
	defer stall.Stop()
	buf := make([]byte, 256<<10)
	start := time.Now()
	var n uint64
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			stall.Reset(f.cfg.StallTimeout)
			if size > 0 && n+uint64(k) > size {
				return n, fmt.Errorf("%w: it served more than the artifact's %d bytes", errMismatch, size)
			}
			if _, err := file.Write(buf[:k]); err != nil {
				return n, err
			}
			n += uint64(k)
			progress(n, size)
			if el := time.Since(start); el > mirrorGrace && float64(n)/el.Seconds() < mirrorMinRate {
				return n, fmt.Errorf("too slow: %s in %.0fs, below %s/s", bytesize.IEC(n), el.Seconds(), bytesize.IEC(mirrorMinRate))
			}
		}
		if errors.Is(rerr, io.EOF) {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

func mirrorClient(caBundle []byte, timeout time.Duration) (*http.Client, error) {
	t := &http.Transport{
		Proxy:                 nil, // a site-local mirror is reached directly
		DialContext:           (&net.Dialer{Timeout: timeout}).DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		DisableCompression:    true,
	}
	if len(caBundle) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caBundle) {
			return nil, errors.New("the mirror's CA bundle holds no PEM certificate")
		}
		t.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: t, Timeout: 0}, nil
}

// mirrorErr prefers why the request was ended (a stall) to how.
func mirrorErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err // without the method and URL the note names already
	}
	return err
}
