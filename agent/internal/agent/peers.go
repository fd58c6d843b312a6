package agent

import (
	"context"
	"io"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/exchange"
)

// Peer exchange (package exchange): with --peer-listen the agent serves
// the verified pieces of its downloads to other agents of the
// installation, and fetches pieces from them (package fetch decides which
// from where); --peer-exchange=false turns both off.

func (a *Agent) peerExchange() bool { return a.cfg.PeerListen != "" && !a.cfg.NoPeerExchange }

// peerClient is the client fetching pieces from peers, nil when peer
// exchange is off.
func (a *Agent) peerClient() *exchange.Client {
	if !a.peerExchange() {
		if a.cfg.PeerListen != "" {
			a.log.Info("peer exchange is off (--peer-exchange=false): not serving pieces on --peer-listen, downloading from the controller only", "peer_listen", a.cfg.PeerListen)
		}
		return nil
	}
	return exchange.NewClient(exchange.ClientConfig{Certificate: a.id.Certificate, Pool: a.id.Pool(),
		Now: func() time.Time { return a.id.ControllerTime(time.Now()) }})
}

// pieceSource is what the piece server serves from (fetch.Fetcher).
type pieceSource interface {
	OpenPiece(ctx context.Context, digest string, index uint32, wait time.Duration) (io.ReadCloser, error)
}

// startPieceServer listens on --peer-listen and serves until ctx ends;
// the hello then names its address. A fetcher that serves no pieces (a
// test's) starts none.
func (a *Agent) startPieceServer(ctx context.Context, controller exchange.Authorizer, f Fetcher) error {
	if !a.peerExchange() {
		return nil
	}
	src, ok := f.(pieceSource)
	if !ok {
		return nil
	}
	s, err := exchange.Listen(exchange.ServerConfig{Addr: a.cfg.PeerListen, Certificate: a.id.Certificate, Pool: a.id.Pool(),
		Controller: controller, Source: src, Logger: a.log.With("component", "pieces"),
		Served: func(n int) { a.metrics.servedBytes.Add(float64(n)) },
		Now:    func() time.Time { return a.id.ControllerTime(time.Now()) }})
	if err != nil {
		return err
	}
	a.peerAddr = s.Addr()
	go s.Serve(ctx)
	a.log.Info("serving pieces to peers", "addr", s.Addr())
	return nil
}
