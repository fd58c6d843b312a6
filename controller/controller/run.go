package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrydeploy/ferry/controller/internal/credential"
	"github.com/ferrydeploy/ferry/shared/sdnotify"
)

// GRPCAddr is the bound gRPC address.
func (c *Controller) GRPCAddr() string { return c.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address.
func (c *Controller) HTTPAddr() string { return c.httpLis.Addr().String() }

// AdvertiseAddress is the address agents and ferryctl are told to dial.
func (c *Controller) AdvertiseAddress() string { return c.advertise }

// CAPin is the CA's pin ("sha256:<hex>").
func (c *Controller) CAPin() string { return c.ca.Pin() }

// AdminCredentialPath is the bootstrap admin credential file.
func (c *Controller) AdminCredentialPath() string { return c.adminPath }

// Close releases what New acquired; Run calls it on return.
func (c *Controller) Close() error {
	if c.member != nil {
		_ = c.member.Leave(time.Second)
		_ = c.member.Shutdown()
		c.member = nil
	}
	if c.grpcLis != nil {
		_ = c.grpcLis.Close() // already closed once grpc.Serve has run
	}
	if c.httpLis != nil {
		_ = c.httpLis.Close() // already closed once the HTTP server has shut down
	}
	var err error
	if c.store != nil {
		err = c.store.Close()
		c.store = nil
	}
	if c.etcd != nil {
		err = errors.Join(err, c.etcd.Close())
		c.etcd = nil
	}
	if c.dirLock != nil {
		err = errors.Join(err, c.dirLock.Release())
		c.dirLock = nil
	}
	return err
}

// Run serves until ctx ends, then stops gracefully: new RPCs are refused,
// agent streams are closed, in-flight unary calls finish (bounded).
func (c *Controller) Run(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, c.Close()) }()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{Registry: c.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !c.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n")) // a prober that hung up has no use for an error
	})
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 2)
	go func() {
		if err := c.grpc.Serve(c.grpcLis); err != nil {
			errc <- err
		}
	}()
	go func() {
		if err := httpSrv.Serve(c.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	engineCtx, stopEngine := context.WithCancel(ctx)
	engineDone := make(chan struct{})
	cc := c.clusterState.Load()
	go func() {
		defer close(engineDone)
		if cc != nil {
			// Several controllers: the engine and job log expiry run on
			// the leader only, while it leads.
			c.runCluster(engineCtx, cc, func(lctx context.Context) {
				logsDone := make(chan struct{})
				go func() { defer close(logsDone); c.expireLogsLoop(lctx) }()
				_ = c.engine.Run(lctx)
				<-logsDone
			})
			return
		}
		if err := c.engine.Run(engineCtx); err != nil && engineCtx.Err() == nil {
			errc <- err
		}
	}()
	// The store is closed last (deferred Close): after the RPC handlers and
	// the engine have stopped writing to it.
	defer func() {
		stopEngine()
		<-engineDone
	}()
	// Blobs damaged while the controller was down are found before agents
	// download them (throttled; the artifact store's VerifyRate).
	verifyCtx, stopVerify := context.WithCancel(ctx)
	verifyDone := make(chan struct{})
	go func() { defer close(verifyDone); c.artifacts.VerifyStored(verifyCtx) }()
	defer func() {
		stopVerify()
		<-verifyDone
	}()
	if c.replicas != nil {
		// Blobs the other controllers hold and this one lacks are fetched
		// in the background, at start and then periodically.
		replCtx, stopRepl := context.WithCancel(ctx)
		replDone := make(chan struct{})
		go func() { defer close(replDone); c.replicas.Run(replCtx) }()
		defer func() {
			stopRepl()
			<-replDone
		}()
	}
	logsCtx, stopLogs := context.WithCancel(ctx)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		if cc == nil {
			c.expireLogsLoop(logsCtx)
		}
	}()
	defer func() {
		stopLogs()
		<-logsDone
	}()
	// On etcd, revocations made through another controller apply here too.
	followCtx, stopFollow := context.WithCancel(ctx)
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		c.admins.Follow(followCtx, func(err error) { c.log.Warn("reread admin revocations", "err", err) })
	}()
	defer func() {
		stopFollow()
		<-followDone
	}()
	stopBackups := c.serveBackups(ctx)
	defer stopBackups()
	servingCtx, stopServing := context.WithCancel(ctx)
	servingDone := make(chan struct{})
	go func() { defer close(servingDone); c.renewServingLoop(servingCtx) }()
	defer func() {
		stopServing()
		<-servingDone
	}()
	c.ready.Store(true)
	if err := sdnotify.Ready(); err != nil {
		c.log.Warn("notify systemd", "err", err)
	}
	c.log.Info("controller serving", "grpc", c.GRPCAddr(), "http", c.HTTPAddr(), "advertise", c.advertise, "ca_pin", c.ca.Pin(), "admin_credential", c.adminPath)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	c.ready.Store(false)
	_ = sdnotify.Stopping()
	c.log.Info("controller shutting down")
	// Agent streams are long-lived: close them first so the graceful stop
	// only waits for short calls.
	c.fleet.CloseAll()
	stopped := make(chan struct{})
	go func() { c.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		c.grpc.Stop()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(sctx)
	return runErr
}

// AdminTLS returns a client TLS config from the bootstrap admin
// credential, for embedding programs and tests.
func (c *Controller) AdminTLS() (*tls.Config, error) {
	cred, err := credential.Load(c.adminPath)
	if err != nil {
		return nil, err
	}
	return cred.TLS(), nil
}
