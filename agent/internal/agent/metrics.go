package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrydeploy/ferry/shared/version"
)

// agentMetrics are the agent's own metrics, served on --metrics-listen
// (off by default; meant for localhost: the node's own exporter or a local
// Prometheus agent scrapes it).
type agentMetrics struct {
	reg        *prometheus.Registry
	connected  prometheus.Gauge
	heartbeats prometheus.Counter
	reconnects prometheus.Counter
	jobs       *prometheus.CounterVec
	// Peer exchange.
	pieceBytes  *prometheus.CounterVec
	servedBytes prometheus.Counter
	badPieces   prometheus.Counter
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_agent_connected", Help: "1 while the agent's stream to the controller is up.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_agent_heartbeats_sent_total", Help: "Heartbeats sent to the controller.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_agent_stream_reconnects_total", Help: "Times the stream to the controller ended and was retried.",
		}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_agent_jobs_total", Help: "Jobs finished, by final phase.",
		}, []string{"phase"}),
		pieceBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_agent_piece_bytes_total", Help: "Bytes of verified download pieces fetched with peer exchange, by source (peer or controller).",
		}, []string{"source"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_agent_piece_bytes_served_total", Help: "Bytes of download pieces this agent served to other agents.",
		}),
		badPieces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_agent_bad_peer_pieces_total", Help: "Pieces a peer served that did not match their digest (the peer was dropped and reported).",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ferry_agent_build_info", Help: "Build information of the agent; the value is always 1.",
	}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(version.Version, version.Commit, runtime.Version()).Set(1)
	m.reg.MustRegister(m.connected, m.heartbeats, m.reconnects, m.jobs, m.pieceBytes, m.servedBytes, m.badPieces, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serveMetrics serves /metrics on addr until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		// ctx has ended: the shutdown gets its own deadline, keeping ctx's values.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	a.log.Info("serving agent metrics", "addr", lis.Addr().String())
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent metrics server", "err", err)
		}
	}()
	return nil
}
