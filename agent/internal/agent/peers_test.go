package agent

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/fetch"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// pieceFetcher is the fake fetcher with pieces to serve (none).
type pieceFetcher struct{ Fetcher }

func (pieceFetcher) OpenPiece(context.Context, string, uint32, time.Duration) (io.ReadCloser, error) {
	return nil, fetch.ErrNoPiece
}

// With --peer-listen the agent serves pieces and its hello names the
// server's address; without it, or with --peer-exchange=false, neither.
func TestHelloNamesThePieceServer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen string
		off    bool
		serves bool
	}{
		{"peer-listen set", "127.0.0.1:0", false, true},
		{"peer-exchange=false", "127.0.0.1:0", true, false},
		{"no peer-listen", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ta := newTestAgent(t, agentOptions{config: func(c *Config) {
				c.PeerListen, c.NoPeerExchange = tc.listen, tc.off
				nf := c.NewFetcher
				c.NewFetcher = func(cl ferryv1.AgentServiceClient) (Fetcher, error) {
					f, err := nf(cl)
					return pieceFetcher{f}, err
				}
			}})
			ta.run()
			addr := ta.stream().hello.GetPeerAddress()
			if !tc.serves {
				if addr != "" {
					t.Fatalf("the hello names a piece server at %q; want none", addr)
				}
				return
			}
			if addr == "" {
				t.Fatal("the hello names no piece server")
			}
			conn, err := net.DialTimeout("tcp", addr, waitFor)
			if err != nil {
				t.Fatalf("nothing listens at the hello's piece server %s: %v", addr, err)
			}
			conn.Close()
		})
	}
}
