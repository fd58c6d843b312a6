package exchange

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Client defaults.
const (
	// DefaultStall gives up on a peer that sent nothing of a piece for
	// this long (the first bytes included: the request asks the peer to
	// wait at most requestWait for a piece it is still fetching).
	DefaultStall = 5 * time.Second
	requestWait  = 3 * time.Second
	// maxConns bounds the peer connections kept; past it the oldest is
	// closed.
	maxConns = 64
)

// errStalled ends a piece stream that brought nothing for the stall time.
var errStalled = errors.New("the peer sent nothing")

// ClientConfig configures a Client.
type ClientConfig struct {
	// Certificate returns the agent's current certificate; Pool is the
	// installation's CA.
	Certificate func() *tls.Certificate
	Pool        *x509.CertPool
	// Stall: see DefaultStall (the default).
	Stall time.Duration
	Now   func() time.Time
}

// Client fetches pieces from other agents' piece servers
// (fetch.PeerClient). It keeps one connection per peer.
type Client struct {
	cfg   ClientConfig
	mu    sync.Mutex
	conns map[string]*peerConn // by node ID and address
	order []string             // keys, oldest first
}

type peerConn struct {
	conn   *grpc.ClientConn
	client ferryv1.PieceServiceClient
}

// NewClient returns a client; Close closes its connections.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Stall <= 0 {
		cfg.Stall = DefaultStall
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Client{cfg: cfg, conns: map[string]*peerConn{}}
}

func (c *Client) peer(node, addr string) (ferryv1.PieceServiceClient, error) {
	key := node + "@" + addr
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.conns[key]; ok {
		return p.client, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(c.cfg.Certificate, c.cfg.Pool, node, c.cfg.Now))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*messageSize)))
	if err != nil {
		return nil, fmt.Errorf("peer %s at %s: %w", node, addr, err)
	}
	if len(c.order) >= maxConns {
		old := c.order[0]
		c.order = c.order[1:]
		_ = c.conns[old].conn.Close() // fails only when already closed
		delete(c.conns, old)
	}
	p := &peerConn{conn: conn, client: ferryv1.NewPieceServiceClient(conn)}
	c.conns[key] = p
	c.order = append(c.order, key)
	return p.client, nil
}

// FetchPiece fetches piece index of digest, length bytes, from node's
// piece server at addr. The bytes are not verified here: the caller
// checks them against the piece's digest. A peer that sends more than
// length bytes, fewer, or nothing for the stall time, fails.
func (c *Client) FetchPiece(ctx context.Context, node, addr, digest string, index, length uint32) ([]byte, error) {
	client, err := c.peer(node, addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.cfg.Stall, func() { cancel(errStalled) })
	defer stall.Stop()
	s, err := client.FetchPiece(ctx, &ferryv1.FetchPieceRequest{Digest: digest, Index: index, Wait: durationpb.New(requestWait)})
	if err != nil {
		return nil, c.cause(ctx, err)
	}
	buf := make([]byte, 0, length)
	var msg ferryv1.FetchPieceResponse
	for {
		msg.Reset()
		if err := s.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				if len(buf) != int(length) {
					return nil, fmt.Errorf("the peer ended the piece after %d of %d bytes", len(buf), length)
				}
				return buf, nil
			}
			return nil, c.cause(ctx, err)
		}
		stall.Reset(c.cfg.Stall)
		if len(buf)+len(msg.GetData()) > int(length) {
			return nil, fmt.Errorf("the peer sent more than the piece's %d bytes", length)
		}
		buf = append(buf, msg.GetData()...)
	}
}

// cause prefers why the call was ended (a stall) to how.
func (c *Client) cause(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return fmt.Errorf("%w for %v", errStalled, c.cfg.Stall)
	}
	return err
}

// Close closes the peer connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.conns {
		_ = p.conn.Close() // fails only when already closed
	}
	clear(c.conns)
	c.order = nil
}
