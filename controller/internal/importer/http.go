package importer

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// httpClient fetches with the trust an import was given.
type httpClient struct {
	c      *http.Client
	custom bool // verifying with an admin's CA bundle
}

func newClient(caBundle []byte) (*httpClient, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 30 * time.Second
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	hc := &httpClient{c: &http.Client{Transport: t}}
	if len(caBundle) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caBundle) {
			return nil, fmt.Errorf("%w: the CA bundle holds no PEM certificate; give a file with -----BEGIN CERTIFICATE----- blocks", artifact.ErrInvalid)
		}
		t.TLSClientConfig.RootCAs = pool
		hc.custom = true
	}
	return hc, nil
}

// fetchErr says why a request to u failed, in an operator's words.
func (hc *httpClient) fetchErr(u *url.URL, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	fix := "give the CA that signed it with --ca-bundle FILE"
	if hc.custom {
		fix = "the --ca-bundle given does not hold the CA that signed it; give the right one"
	}
	switch {
	case errors.As(err, &hostname):
		return fatal{fmt.Errorf("%w: %s: TLS verification failed: the server's certificate is not valid for %s (%v); use the host name the certificate names", ErrFetch, u.Redacted(), u.Hostname(), hostname.Error())}
	case errors.As(err, &unknown), errors.As(err, &invalid), errors.As(err, &verify):
		return fatal{fmt.Errorf("%w: %s: TLS verification failed: the server's certificate is not signed by a trusted CA (%w); %s", ErrFetch, u.Redacted(), err, fix)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %s: connection refused by %s; is the repository up?", ErrFetch, u.Redacted(), u.Host)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fatal{fmt.Errorf("%w: %s: cannot resolve %s", ErrFetch, u.Redacted(), u.Hostname())}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %s: no answer in time", ErrFetch, u.Redacted())
	}
	return fmt.Errorf("%w: %s: %w", ErrFetch, u.Redacted(), err)
}

func statusErr(u *url.URL, resp *http.Response) error {
	return fmt.Errorf("%w: %s: the server answered HTTP %s", ErrFetch, u.Redacted(), resp.Status)
}

// getSmall fetches a small file (a checksum file) whole.
func (hc *httpClient) getSmall(ctx context.Context, u *url.URL, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", artifact.ErrInvalid, u.Redacted(), err)
	}
	resp, err := hc.c.Do(req)
	if err != nil {
		return nil, hc.fetchErr(u, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, statusErr(u, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, hc.fetchErr(u, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes, too large for a checksum file", artifact.ErrInvalid, u.Redacted(), limit)
	}
	return data, nil
}

// partial is what is known of a partial download, kept beside it so a
// later attempt resumes only the same version of the file.
type partial struct {
	URL          string `json:"url"`
	Digest       string `json:"digest"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Total        uint64 `json:"total,omitempty"`
}

// validator is what If-Range names: a strong ETag, else Last-Modified
// ("" when the server gave neither, and a transfer cannot resume).
func (p partial) validator() string {
	if p.ETag != "" && !strings.HasPrefix(p.ETag, "W/") {
		return p.ETag
	}
	return p.LastModified
}

// partialKey names the partial of one URL and digest.
func partialKey(u *url.URL, digest string) string {
	h := sha256.Sum256([]byte(u.String() + "\n" + digest))
	return "import-" + hex.EncodeToString(h[:16])
}

// fetchHTTP downloads u into the staging directory, resuming what an
// earlier transfer kept, and stores the file.
func (im *Importer) fetchHTTP(ctx context.Context, hc *httpClient, u source, put artifact.PutRequest, progress func(Progress)) (*ferryv1.Artifact, artifact.Pushed, uint64, error) {
	key := partialKey(u.url, put.SHA256)
	im.mu.Lock()
	if im.running[key] {
		im.mu.Unlock()
		return nil, artifact.Unchanged, 0, fmt.Errorf("%w: %s is being imported already; wait for that import", ErrBusy, u)
	}
	im.running[key] = true
	im.mu.Unlock()
	defer func() {
		im.mu.Lock()
		delete(im.running, key)
		im.mu.Unlock()
	}()
	dataPath := filepath.Join(im.cfg.Store.Staging(), key+".part")
	metaPath := filepath.Join(im.cfg.Store.Staging(), key+".json")
	dl := &download{im: im, hc: hc, u: u.url, dataPath: dataPath, metaPath: metaPath, digest: put.SHA256, progress: progress}
	resumed, err := dl.run(ctx)
	if err != nil {
		return nil, artifact.Unchanged, resumed, err
	}
	_ = os.Remove(metaPath) // the file is complete; PutStaged consumes it
	progress(Progress{Received: dl.have, Total: dl.have, ResumedFrom: resumed, Stage: "verifying"})
	put.Size = dl.have
	a, pushed, err := im.cfg.Store.PutStaged(ctx, put, dataPath)
	return a, pushed, resumed, err
}

// download is one import's transfer into its partial file.
type download struct {
	im                 *Importer
	hc                 *httpClient
	u                  *url.URL
	dataPath, metaPath string
	digest             string
	progress           func(Progress)
	meta               partial
	have               uint64 // bytes in the partial file
	resumed            uint64
}

// run fetches until the file is complete. A transfer that breaks is
// retried, resuming, while attempts make progress; a fatal answer (an
// HTTP error status, TLS, too large) removes the partial.
func (d *download) run(ctx context.Context) (resumed uint64, err error) {
	d.loadPartial()
	d.resumed = d.have
	failures := 0
	for {
		done, progressed, err := d.attempt(ctx)
		switch {
		case err == nil && done:
			return d.resumed, nil
		case ctx.Err() != nil && d.have == 0:
			d.discard()
			return d.resumed, ctx.Err()
		case ctx.Err() != nil:
			d.savePartial()
			return d.resumed, fmt.Errorf("import of %s stopped with %d bytes kept; run it again to resume: %w", d.u.Redacted(), d.have, ctx.Err())
		case errors.Is(err, errFatal):
			d.discard()
			return d.resumed, err
		}
		d.savePartial()
		if progressed {
			failures = 0
		}
		failures++
		if failures >= d.im.cfg.Attempts {
			if d.have == 0 {
				d.discard()
				return d.resumed, fmt.Errorf("%w; gave up after %d attempts", err, failures)
			}
			return d.resumed, fmt.Errorf("%w; gave up after %d attempts without progress, %d bytes kept: run the import again to resume", err, failures, d.have)
		}
		d.im.log.Warn("artifact import transfer broke; resuming", "source", d.u.Redacted(), "have", d.have, "attempt", failures, "err", err)
		t := time.NewTimer(d.im.cfg.RetryWait(failures))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// errFatal marks an error retrying cannot fix; errors.Unwrap gives it.
var errFatal = errors.New("fatal")

type fatal struct{ error }

func (f fatal) Unwrap() error        { return f.error }
func (f fatal) Is(target error) bool { return target == errFatal }

// attempt is one request: from the start, or resuming from d.have.
func (d *download) attempt(ctx context.Context) (done, progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.u.String(), nil)
	if err != nil {
		return false, false, fatal{fmt.Errorf("%w: %s: %w", artifact.ErrInvalid, d.u.Redacted(), err)}
	}
	// Ask for the raw bytes: the digest is over the file, not an encoding.
	req.Header.Set("Accept-Encoding", "identity")
	resuming := d.have > 0 && d.meta.validator() != ""
	if resuming {
		req.Header.Set("Range", "bytes="+strconv.FormatUint(d.have, 10)+"-")
		req.Header.Set("If-Range", d.meta.validator())
	}
	resp, err := d.hc.c.Do(req)
	if err != nil {
		return false, false, d.hc.fetchErr(d.u, err) // fatal for TLS and DNS
	}
	defer func() { _ = resp.Body.Close() }()
	var offset uint64
	switch {
	case resp.StatusCode == http.StatusPartialContent && resuming:
		start, total, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || start != d.have {
			d.restart()
			return false, true, fmt.Errorf("%s: the server resumed at another offset (Content-Range %q); starting over", d.u.Redacted(), resp.Header.Get("Content-Range"))
		}
		offset = start
		if total > 0 {
			d.meta.Total = total
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && resuming:
		if _, total, ok := contentRange(resp.Header.Get("Content-Range")); ok && total == d.have {
			return true, false, nil // the partial already holds the whole file
		}
		d.restart()
		return false, true, fmt.Errorf("%s: the server cannot resume at byte %d; starting over", d.u.Redacted(), d.have)
	case resp.StatusCode == http.StatusOK:
		if d.have > 0 {
			d.im.log.Info("artifact import starts over: the server sent the whole file (it changed, or does not resume)", "source", d.u.Redacted(), "had", d.have)
		}
		d.restart()
		d.meta.Total = 0
		if resp.ContentLength > 0 {
			d.meta.Total = uint64(resp.ContentLength)
		}
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return false, false, statusErr(d.u, resp)
	default:
		return false, false, fatal{statusErr(d.u, resp)}
	}
	d.meta.ETag, d.meta.LastModified = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	if d.meta.Total > d.im.cfg.MaxSize {
		return false, false, fatal{tooLarge(source{url: d.u}, d.meta.Total, d.im.cfg.MaxSize)}
	}
	f, err := os.OpenFile(d.dataPath, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return false, false, fatal{fmt.Errorf("%s: open the partial download: %w", d.u.Redacted(), err)}
	}
	if err := f.Truncate(int64(offset)); err != nil {
		_ = f.Close()
		return false, false, fatal{fmt.Errorf("%s: %w", d.u.Redacted(), err)}
	}
	if _, err := f.Seek(int64(offset), io.SeekStart); err != nil {
		_ = f.Close()
		return false, false, fatal{fmt.Errorf("%s: %w", d.u.Redacted(), err)}
	}
	d.have = offset
	d.savePartial()
	start := d.have
	copyErr := d.copy(ctx, cancel, f, resp.Body)
	syncErr := f.Sync()
	closeErr := f.Close()
	progressed = d.have > start
	switch {
	case errors.Is(copyErr, errFatal):
		return false, false, copyErr
	case errors.Is(copyErr, ErrTooLarge):
		return false, false, fatal{copyErr}
	case copyErr != nil:
		return false, progressed, d.hc.fetchErr(d.u, copyErr)
	case syncErr != nil || closeErr != nil:
		return false, false, fatal{fmt.Errorf("%s: write the download to %s: %w", d.u.Redacted(), filepath.Dir(d.dataPath), errors.Join(syncErr, closeErr))}
	case d.meta.Total > 0 && d.have < d.meta.Total:
		return false, progressed, fmt.Errorf("%w: %s: the transfer ended after %d of %d bytes", ErrFetch, d.u.Redacted(), d.have, d.meta.Total)
	}
	return true, progressed, nil
}

// copy writes the body to f, bounded by the size limit, and ends the
// request when nothing arrives for StallTimeout.
func (d *download) copy(ctx context.Context, cancel context.CancelCauseFunc, f *os.File, body io.Reader) error {
	stalled := errors.New("no data arrived for " + d.im.cfg.StallTimeout.String())
	timer := time.AfterFunc(d.im.cfg.StallTimeout, func() { cancel(stalled) })
	defer timer.Stop()
	buf := make([]byte, artifact.ChunkSize)
	last := time.Now()
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			timer.Reset(d.im.cfg.StallTimeout)
			if d.have+uint64(n) > d.im.cfg.MaxSize || (d.meta.Total > 0 && d.have+uint64(n) > d.meta.Total) {
				limit := d.im.cfg.MaxSize
				if d.meta.Total > 0 && d.meta.Total < limit {
					return fmt.Errorf("%w: %s sent more than the %d bytes it announced", ErrTooLarge, d.u.Redacted(), d.meta.Total)
				}
				return tooLarge(source{url: d.u}, d.have+uint64(n), limit)
			}
			if _, err := f.Write(buf[:n]); err != nil {
				return fatal{fmt.Errorf("%s: write the download to %s: %w", d.u.Redacted(), filepath.Dir(d.dataPath), err)}
			}
			d.have += uint64(n)
			if now := time.Now(); now.Sub(last) >= 100*time.Millisecond {
				last = now
				d.progress(Progress{Received: d.have, Total: d.meta.Total, ResumedFrom: d.resumed, Stage: "fetching"})
			}
		}
		if errors.Is(rerr, io.EOF) {
			d.progress(Progress{Received: d.have, Total: d.meta.Total, ResumedFrom: d.resumed, Stage: "fetching"})
			return nil
		}
		if rerr != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return rerr
		}
	}
}

// contentRange parses "bytes START-END/TOTAL" (TOTAL may be "*": 0) and
// "bytes */TOTAL" (start 0).
func contentRange(v string) (start, total uint64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	if tot != "*" {
		t, err := strconv.ParseUint(tot, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return 0, total, true
	}
	s, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseUint(s, 10, 64)
	return start, total, err == nil
}

// loadPartial takes up what an earlier import of the same URL and digest
// kept; anything else starts from nothing.
func (d *download) loadPartial() {
	d.meta = partial{URL: d.u.String(), Digest: d.digest}
	data, err := os.ReadFile(d.metaPath)
	var p partial
	if err != nil || json.Unmarshal(data, &p) != nil || p.URL != d.meta.URL || p.Digest != d.digest {
		d.restart()
		return
	}
	fi, err := os.Stat(d.dataPath)
	if err != nil {
		d.restart()
		return
	}
	d.meta = p
	d.have = uint64(fi.Size()) //nolint:gosec // a file size is never negative
	d.im.log.Info("artifact import resumes a partial download", "source", d.u.Redacted(), "have", d.have)
}

// restart drops the partial's bytes (the file is truncated by the next
// write).
func (d *download) restart() {
	d.have = 0
	d.resumed = 0
	if err := os.Truncate(d.dataPath, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.im.log.Warn("truncate a partial download", "file", d.dataPath, "err", err)
	}
}

func (d *download) savePartial() {
	data, err := json.Marshal(d.meta)
	if err == nil {
		err = atomicfile.WriteFile(d.metaPath, data, 0o600)
	}
	if err != nil {
		d.im.log.Warn("record a partial download; a later import starts over", "file", d.metaPath, "err", err)
	}
}

// discard removes the partial: nothing of a failed import stays.
func (d *download) discard() {
	for _, p := range []string{d.dataPath, d.metaPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.im.log.Warn("remove a failed import's partial download", "file", p, "err", err)
		}
	}
}

// prunePartials removes partial downloads nobody resumed for PartialTTL.
func (im *Importer) prunePartials() {
	dir := im.cfg.Store.Staging()
	entries, err := os.ReadDir(dir)
	if err != nil {
		im.log.Warn("list partial artifact imports", "dir", dir, "err", err)
		return
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || im.cfg.Now().Sub(fi.ModTime()) < im.cfg.PartialTTL {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err == nil {
			im.log.Info("removed a partial artifact import nobody resumed", "file", p, "age", im.cfg.Now().Sub(fi.ModTime()).Round(time.Hour))
		}
	}
}
