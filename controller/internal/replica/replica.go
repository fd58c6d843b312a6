// Package replica copies artifact blobs between the controllers of one
// installation, which share their records in etcd and keep the bytes on
// their own disks, so that losing one controller's disk loses no artifact.
//
// A push or import returns once the bytes (the original and its zstd
// form) are on this controller and one other (Replicate, synchronously);
// they are sent to every other live controller too, in the background.
// With no other controller up, the push succeeds with a warning: the bytes
// are on one controller until another starts. Every controller, at start
// and then every Config.Every, fetches the blobs records name that it
// lacks (a bounded number at once) and removes those no record names any
// more; a controller asked for bytes it lacks (an agent's download, a
// check) fetches them first (FetchBlob). Every copy is checked against
// the record's digest and size by the controller that keeps it
// (artifact.Store.PutBlob); the records in the shared store are the only
// source of truth, and nothing here writes one.
//
// Controllers call each other's ReplicaService over mTLS with their
// controller certificate (the one they serve with), which the policy in
// shared/rpc requires.
package replica

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Defaults of Config.
const (
	DefaultEvery    = time.Minute
	DefaultParallel = 2
)

// Config configures a Replicator.
type Config struct {
	Store *artifact.Store
	Peers Peers
	// TLS is the client TLS config towards the other controllers: the
	// controller certificate, the installation's CA as the root
	// (rpc.ClientTLS).
	TLS *tls.Config
	// Every is how often the background pass runs (DefaultEvery).
	Every time.Duration
	// Parallel bounds the blobs fetched or sent in the background at once
	// (DefaultParallel).
	Parallel int
	Logger   *slog.Logger
}

// Replicator copies blobs to and from the other controllers.
type Replicator struct {
	cfg Config
	log *slog.Logger
	bg  chan struct{} // a slot per background transfer

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn // by address
	flight map[string]*flight          // fetches running, by digest
	closed bool
	wg     sync.WaitGroup // background sends
	stop   context.CancelFunc
	bgCtx  context.Context
}

// flight is one fetch of a digest, which concurrent askers share.
type flight struct {
	done chan struct{}
	err  error
}

// New returns a replicator; Run runs its background pass, Close ends it.
func New(cfg Config) *Replicator {
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Replicator{
		cfg: cfg, log: cfg.Logger, bg: make(chan struct{}, cfg.Parallel),
		conns: map[string]*grpc.ClientConn{}, flight: map[string]*flight{},
		bgCtx: ctx, stop: stop,
	}
}

// Replicate sends the artifact's blobs to other controllers: to one before
// it returns, trying the live ones in random order until one keeps them,
// then to the rest in the background. It returns how many controllers
// hold the bytes when it returns (this one included) and, when that is
// one, a warning for the admin; the background pass copies them later.
func (r *Replicator) Replicate(ctx context.Context, a *ferryv1.Artifact) (copies int, warning string) {
	peers := r.cfg.Peers.Peers()
	if len(peers) == 0 {
		r.log.Warn("no other controller is up: the artifact is on this controller only until another one starts and copies it", "artifact", artifact.Key(a))
		return 1, "no other controller is up: the artifact is on this controller only; another controller copies it when it starts"
	}
	shuffle(peers)
	var errs []string
	for i, p := range peers {
		err := r.send(ctx, p, a)
		if err == nil {
			r.log.Info("artifact copied to another controller", "artifact", artifact.Key(a), "to", p.String())
			r.sendLater(a, peers[i+1:])
			return 2, ""
		}
		if ctx.Err() != nil {
			break
		}
		r.log.Warn("copy an artifact to another controller", "artifact", artifact.Key(a), "to", p.String(), "err", err)
		errs = append(errs, err.Error())
	}
	return 1, fmt.Sprintf("no other controller took a copy (%s): the artifact is on this controller only for now; the controllers copy it between them in the background", strings.Join(errs, "; "))
}

// sendLater sends a's blobs to peers in the background.
func (r *Replicator) sendLater(a *ferryv1.Artifact, peers []Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for _, p := range peers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			select {
			case r.bg <- struct{}{}:
			case <-r.bgCtx.Done():
				return
			}
			defer func() { <-r.bg }()
			if err := r.send(r.bgCtx, p, a); err != nil && r.bgCtx.Err() == nil {
				r.log.Warn("copy an artifact to another controller in the background; it fetches it itself later", "artifact", artifact.Key(a), "to", p.String(), "err", err)
			}
		}()
	}
}

// A copy to or from one controller may take sendBase plus the time its
// bytes take at minRate: one that stalls (a controller that hangs, a
// link that drops everything) gives way to the next instead of holding
// the push.
const (
	sendBase = 30 * time.Second
	minRate  = 4 << 20 // bytes per second
)

func transferTimeout(size uint64) time.Duration {
	secs := min(size/minRate, 1<<30) // a bound no artifact reaches
	return sendBase + time.Duration(secs)*time.Second
}

// send sends each of a's blobs to p; p keeps its own copy of one it holds.
func (r *Replicator) send(ctx context.Context, p Peer, a *ferryv1.Artifact) error {
	conn, err := r.conn(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, transferTimeout(a.GetSize()+a.GetZstdSize()))
	defer cancel()
	client := ferryv1.NewReplicaServiceClient(conn)
	for _, d := range artifact.Forms(a) {
		if err := r.sendBlob(ctx, client, d); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

func (r *Replicator) sendBlob(ctx context.Context, client ferryv1.ReplicaServiceClient, digest string) error {
	form, blob, err := r.cfg.Store.OpenForm(digest)
	if err != nil {
		return err
	}
	defer func() { _ = blob.Close() }() // read-only
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.ReplicateArtifact(ctx)
	if err != nil {
		return plain(err)
	}
	if err := stream.Send(&ferryv1.ReplicateArtifactRequest{Msg: &ferryv1.ReplicateArtifactRequest_Header{Header: &ferryv1.ReplicateArtifactHeader{Digest: form.Digest, Size: form.Size}}}); err != nil && !errors.Is(err, io.EOF) {
		return plain(err)
	}
	buf := make([]byte, artifact.ChunkSize)
	for {
		n, rerr := blob.Read(buf)
		if n > 0 {
			// io.EOF: the receiver answered already (it holds the blob,
			// or refused it); CloseAndRecv says which.
			if err := stream.Send(&ferryv1.ReplicateArtifactRequest{Msg: &ferryv1.ReplicateArtifactRequest_Chunk{Chunk: buf[:n]}}); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return plain(err)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read the blob %s here: %w", digest, rerr)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return plain(err)
	}
	return nil
}

// FetchBlob gets the blob of digest from another controller and stores it
// (artifact.Store.PutBlob checks it), trying the live ones in random order
// until one sends a copy that checks out. Concurrent calls for one digest
// share one fetch. It is the artifact store's Fetcher.
func (r *Replicator) FetchBlob(ctx context.Context, digest string) error {
	r.mu.Lock()
	f, ok := r.flight[digest]
	if !ok {
		f = &flight{done: make(chan struct{})}
		r.flight[digest] = f
	}
	r.mu.Unlock()
	if ok {
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.err = r.fetch(ctx, digest)
	r.mu.Lock()
	delete(r.flight, digest)
	r.mu.Unlock()
	close(f.done)
	return f.err
}

func (r *Replicator) fetch(ctx context.Context, digest string) error {
	peers := r.cfg.Peers.Peers()
	if len(peers) == 0 {
		return errors.New("no other controller is up")
	}
	shuffle(peers)
	var errs []error
	for _, p := range peers {
		err := r.fetchFrom(ctx, p, digest)
		if err == nil {
			r.log.Info("artifact blob fetched from another controller", "digest", digest, "from", p.String())
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.log.Warn("fetch an artifact blob from another controller", "digest", digest, "from", p.String(), "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	return errors.Join(errs...)
}

func (r *Replicator) fetchFrom(ctx context.Context, p Peer, digest string) error {
	conn, err := r.conn(p)
	if err != nil {
		return err
	}
	var size uint64
	if form, err := r.cfg.Store.LookupForm(digest); err == nil {
		size = form.Size
	}
	ctx, cancel := context.WithTimeout(ctx, transferTimeout(size))
	defer cancel()
	stream, err := ferryv1.NewReplicaServiceClient(conn).FetchArtifact(ctx, &ferryv1.FetchArtifactRequest{Digest: digest})
	if err != nil {
		return plain(err)
	}
	return r.cfg.Store.PutBlob(ctx, digest, &fetchReader{stream: stream})
}

// fetchReader reads the chunks of a fetch; it is an artifact.ChunkSource.
type fetchReader struct {
	stream grpc.ServerStreamingClient[ferryv1.FetchArtifactResponse]
	msg    ferryv1.FetchArtifactResponse
	rest   []byte
}

func (f *fetchReader) next() ([]byte, error) {
	f.msg.Reset()
	if err := f.stream.RecvMsg(&f.msg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, plain(err)
	}
	return f.msg.GetChunk(), nil
}

func (f *fetchReader) Read(p []byte) (int, error) {
	for len(f.rest) == 0 {
		b, err := f.next()
		if err != nil {
			return 0, err
		}
		f.rest = b
	}
	n := copy(p, f.rest)
	f.rest = f.rest[n:]
	return n, nil
}

func (f *fetchReader) CopyChunks(w io.Writer) error {
	for {
		b, err := f.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
}

// Run fetches the blobs this controller lacks and removes those no record
// names, at once and then every Config.Every, until ctx ends; then it
// closes the connections to the other controllers.
func (r *Replicator) Run(ctx context.Context) {
	defer r.Close()
	t := time.NewTicker(r.cfg.Every)
	defer t.Stop()
	for {
		r.Pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Pass is one run of the background pass; it returns when its fetches
// are done.
func (r *Replicator) Pass(ctx context.Context) {
	if _, err := r.cfg.Store.RemoveUnrecorded(); err != nil {
		r.log.Warn("remove artifact blobs no record names", "err", err)
	}
	lacking, err := r.cfg.Store.Lacking()
	if err != nil {
		r.log.Warn("list the artifact blobs this controller lacks", "err", err)
		return
	}
	if len(lacking) == 0 || len(r.cfg.Peers.Peers()) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, d := range lacking {
		select {
		case r.bg <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-r.bg }()
			if err := r.FetchBlob(ctx, d); err != nil && ctx.Err() == nil {
				r.log.Warn("artifact blob lacking here; no other controller could send it, trying again later", "digest", d, "retry_in", r.cfg.Every, "err", err)
			}
		}()
	}
	wg.Wait()
}

// Close ends the background sends and closes the connections.
func (r *Replicator) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, c := range r.conns {
		_ = c.Close() // nothing is left to send on it
		delete(r.conns, addr)
	}
}

// conn returns the connection to p, made once per address.
func (r *Replicator) conn(p Peer) (*grpc.ClientConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.conns[p.Addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(p.Addr, rpc.DialOptions(r.cfg.TLS)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	r.conns[p.Addr] = c
	return c, nil
}

// plain is a peer's error in words: its status message, without the gRPC
// framing.
func plain(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

// shuffle spreads the copies and fetches over the peers; the order needs
// no secrecy.
func shuffle(peers []Peer) {
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] }) //nolint:gosec // G404: load spreading, not security
}
