// Package controller assembles the Ferry controller: it prepares the data
// dir (CA, serving certificate, gossip key, bootstrap admin credential),
// opens the store, and serves the gRPC API and the HTTP endpoints
// (/metrics, /healthz, /readyz) until its context ends.
package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/cluster"
	"github.com/ferrydeploy/ferry/controller/internal/credential"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/gossipkey"
	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
	"github.com/ferrydeploy/ferry/controller/internal/metrics"
	"github.com/ferrydeploy/ferry/controller/internal/packages"
	"github.com/ferrydeploy/ferry/controller/internal/replica"
	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	"github.com/ferrydeploy/ferry/controller/internal/server"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/controller/internal/tracker"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/dirlock"
	"github.com/ferrydeploy/ferry/shared/gossip"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Config is the controller's configuration.
type Config struct {
	DataDir           string        // state: ferry.db, CA, certificates, artifacts
	GRPCAddr          string        // gRPC listen address, e.g. ":7443"
	HTTPAddr          string        // metrics/health listen address, e.g. "127.0.0.1:7080"
	AdvertiseAddress  string        // host:port agents and ferryctl dial; default from GRPCAddr and the host name
	ServerNames       []string      // extra DNS names / IPs for the serving certificate
	HeartbeatInterval time.Duration // what agents are told (default 5s)
	AgentCertTTL      time.Duration // default 30 days; agents renew at two thirds
	AdminCertTTL      time.Duration // default 1 year
	MaxDownloads      int           // artifact downloads streaming at once (default artifact.DefaultMaxDownloads)
	MaxNodeDownloads  int           // of those, how many one node may stream or wait for (default artifact.DefaultMaxDownloadsPerNode)
	DownloadStall     time.Duration // a download whose agent takes no chunk for this long ends, freeing its slot (default artifact.DefaultStallTimeout)
	GossipAddr        string        // memberlist bind address; "" disables gossip
	GossipAdvertise   string        // host:port peers dial (default: the bound address)
	GossipProfile     string        // lan (default), local or wan
	GossipKeyGrace    time.Duration // how long after a rotation the previous gossip key still works (default 30s)
	AllowNewStore     bool          // create ferry.db although the data dir holds earlier state (store.go)
	Join              bool          // with --store etcd: join the controllers already on the etcd store, with the CA copied into the data dir (store.go)
	Store             StoreConfig   // bbolt in the data dir, or etcd (store.go)
	Logs              LogLimits     // job output kept (joblogs.go)
	ImportDirs        []string      // directories `artifact import` may read files below (none: path imports refused)
	ControllerID      string        // with --store etcd: this controller's ID among those sharing the store (default: the host name)
	ClusterTTL        time.Duration // with --store etcd: lease of membership and leadership (default cluster.DefaultTTL)
	PeerExchangeOff   bool          // --peer-exchange=false: GetPieces is refused and agents download from the controller
	// peerFilter (tests) hides controllers from the replicator.
	peerFilter func(replica.Peer) bool
	Logger     *slog.Logger
	Now        func() time.Time
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("controller: --data-dir is required")
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = ":7443"
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:7080"
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.AgentCertTTL <= 0 {
		c.AgentCertTTL = 30 * 24 * time.Hour
	}
	if c.AdminCertTTL <= 0 {
		c.AdminCertTTL = 365 * 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.GossipKeyGrace <= 0 {
		c.GossipKeyGrace = defaultGossipKeyGrace
	}
	if err := c.Store.setDefaults(); err != nil {
		return err
	}
	if c.Join && c.Store.Backend != StoreEtcd {
		return errors.New("--join: a controller joins others that share one etcd store: add --store etcd --etcd-endpoints ... (on bbolt each controller has a store of its own, and a data dir holding a CA but no ferry.db is a lost store)")
	}
	if c.Store.Backend == StoreEtcd && c.Logs.MaxTotalBytes == 0 {
		c.Logs.MaxTotalBytes = DefaultEtcdLogMaxTotalBytes
	}
	return c.Logs.setDefaults()
}

// Controller is a running controller.
type Controller struct {
	cfg       Config
	log       *slog.Logger
	ca        *pki.CA
	store     *store.Store
	fleet     *fleet.Registry
	reg       *prometheus.Registry
	grpcLis   net.Listener
	httpLis   net.Listener
	grpc      *grpc.Server
	ready     atomic.Bool
	gossipKey *gossipkey.Ring
	packages  *packages.Store
	engine    *rollout.Engine
	artifacts *artifact.Store
	replicas  *replica.Replicator // on etcd: copies blobs between controllers
	downloads *artifact.Downloader
	member    *gossip.Member
	adminPath string
	advertise string
	dirLock   *dirlock.Lock // held while the controller uses its data dir
	admins    *server.Admins
	// etcd is the client of an etcd store (nil on bbolt); Close closes it.
	etcd *clientv3.Client
	// serving is the controller's TLS certificate, replaced while running
	// before it expires (serving.go).
	serving    atomic.Pointer[tls.Certificate]
	renewEvery time.Duration // how often Run checks whether it is due
	// clusterState is set on etcd: membership, leadership, relay
	// (cluster.go).
	clusterState atomic.Pointer[clustered]
}

// New prepares the data dir, opens the store and binds the listeners.
func New(cfg Config) (*Controller, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: cfg.Logger}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	var err error
	if c.dirLock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	// The store first: what else the data dir holds tells a first start
	// from a lost store only before anything is created.
	if cfg.Store.Backend == StoreEtcd {
		c.store, c.etcd, err = openEtcdStore(context.Background(), cfg)
	} else {
		c.store, err = openStore(cfg)
	}
	if err != nil {
		_ = c.dirLock.Release() // the store's error is the one to report
		return nil, err
	}
	if c.etcd != nil {
		// Cut off from etcd, writes fail at once with a clear message
		// rather than after etcd's timeouts (cluster.CutOffError).
		c.store = c.store.Fenced(func() ([]clientv3.Cmp, error) { return nil, c.gate() })
	}
	ok := false
	defer func() {
		if !ok {
			_ = c.Close() // New returns the error that made it fail
		}
	}()
	ca, created, err := pki.LoadOrCreateCA(cfg.DataDir, cfg.Now())
	if err != nil {
		return nil, err
	}
	c.ca = ca
	if created {
		c.log.Info("created a new CA", "dir", cfg.DataDir, "ca_pin", ca.Pin())
	}
	if c.gossipKey, err = gossipkey.Open(filepath.Join(cfg.DataDir, "gossip.key")); err != nil {
		return nil, err
	}
	if c.fleet, err = fleet.New(fleet.Config{Store: c.store, Logger: c.log, Now: cfg.Now, HeartbeatInterval: cfg.HeartbeatInterval, Evaluate: health.Evaluate}); err != nil {
		return nil, err
	}
	if c.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	if c.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	c.advertise = cfg.AdvertiseAddress
	if c.advertise == "" {
		c.advertise = advertiseFrom(c.grpcLis.Addr().(*net.TCPAddr))
	}
	serving, err := c.servingCert()
	if err != nil {
		return nil, err
	}
	c.serving.Store(serving)
	c.renewEvery = servingCheckEvery
	c.adminPath, err = filepath.Abs(filepath.Join(cfg.DataDir, "admin.yaml"))
	if err != nil {
		return nil, err
	}
	if err := c.ensureAdminCredential(); err != nil {
		return nil, err
	}

	c.reg = prometheus.NewRegistry()
	c.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	c.reg.MustRegister(grpcMetrics)
	m := metrics.New(c.reg, func() []*ferryv1.Node { return c.fleet.List(fleet.Filter{}) }, cfg.Now)

	admins, err := server.NewAdmins(c.store)
	c.admins = admins
	if err != nil {
		return nil, err
	}
	grpcOpts := rpc.ServerOptions{
		TLS:     rpc.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.serving.Load(), nil }, ca.Pool()),
		Logger:  c.log,
		Metrics: &rpc.Interceptors{Unary: grpcMetrics.UnaryServerInterceptor(), Stream: grpcMetrics.StreamServerInterceptor()},
		Check: func(ctx context.Context, id pki.Identity, cert *x509.Certificate) error {
			if err := admins.Check(id, cert); err != nil {
				return err
			}
			return c.fleet.CheckIdentity(id, cert)
		},
	}
	c.grpc = rpc.NewServer(grpcOpts)
	if err := c.startGossip(); err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.GossipAddr, err)
	}
	onEtcd := cfg.Store.Backend == StoreEtcd
	if c.artifacts, err = artifact.Open(artifact.Config{Dir: filepath.Join(cfg.DataDir, "artifacts"), Records: c.store, Logger: c.log.With("component", "artifact"), Now: cfg.Now, Shared: onEtcd}); err != nil {
		return nil, err
	}
	if onEtcd {
		// Controllers sharing the store copy the blobs between them
		// (package replica), calling each other with this certificate.
		clientTLS := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.serving.Load(), nil }, ca.Pool())
		c.replicas = replica.New(replica.Config{
			Store: c.artifacts, TLS: clientTLS, Logger: c.log.With("component", "replica"),
			Peers: clusterPeers{c: c},
		})
		c.artifacts.SetFetcher(c.replicas)
	}
	metrics.RegisterArtifacts(c.reg, c.artifacts.Damaged)
	imports, err := importer.New(importer.Config{Store: c.artifacts, Dirs: cfg.ImportDirs, Logger: c.log.With("component", "import"), Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	if c.packages, err = packages.New(c.store, c.artifacts, cfg.Now); err != nil {
		return nil, err
	}
	engineStore := c.store
	var leading func() error
	if c.etcd != nil {
		if err := c.newCluster(); err != nil {
			return nil, err
		}
		// The engine's writes hold only while this controller leads.
		engineStore, leading = c.store.Fenced(c.leaderFence), c.engineLeading
	}
	c.engine, err = rollout.New(rollout.Config{
		Store: engineStore, Dispatcher: dispatcher{fleet: c.fleet, store: c.store, artifacts: c.artifacts, log: c.log.With("component", "rollout"), leading: leading}, Fleet: c.fleet, Packages: c.packages,
		Auditor: engineStore, Logger: c.log.With("component", "rollout"),
		Groups:  engineStore, // desired state per group and catch-up
		Leading: leading,
		// Job reports arriving together are saved together: one etcd
		// transaction for up to 256 of them (rollout/savebatch.go).
		SaveWindow: 50 * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	c.reg.MustRegister(rolloutCollector{engine: c.engine})
	c.downloads = artifact.NewDownloader(artifact.DownloaderConfig{Store: c.artifacts, MaxConcurrent: cfg.MaxDownloads, MaxPerNode: cfg.MaxNodeDownloads, StallTimeout: cfg.DownloadStall, BytesServed: m.ArtifactBytesServed, Logger: c.log.With("component", "artifact")})
	js := jobSink{engine: c.engine, store: c.store, metrics: m, log: c.log, now: cfg.Now, logs: cfg.Logs, logRate: newLogRate(cfg.Now)}
	var jobs server.JobSink = js
	var events server.AgentEvents
	var jobArtifacts server.JobArtifacts = c.engine // downloads follow the jobs the engine sent
	cc := c.clusterState.Load()
	if cc != nil {
		jobs, events = clusterJobs{local: js, cc: cc}, clusterEvents{cc: cc}
		jobArtifacts = &clusterArtifacts{engine: c.engine, cc: cc}
	}
	deps := &server.Deps{
		Store: c.store, Fleet: c.fleet, CA: ca, Logger: c.log, Now: cfg.Now,
		Gossip: c.gossipKeys(), GossipLabel: gossipLabel(ca),
		AgentCertTTL: cfg.AgentCertTTL, AdminCertTTL: cfg.AdminCertTTL,
		AdvertiseAddress: c.advertise, Observer: m, Admins: admins, GossipSeeds: c.gossipSeeds, OnHello: c.rejoin,
		Jobs:      jobs,
		Artifacts: c.artifacts,
		Downloads: c.downloads,
		Importer:  imports,
		Replicas:  c.replicasOrNil(),
		Packages:  c.packages,
		Rollouts:  c.engine,
		Groups:    c.engine,

		JobArtifacts: jobArtifacts,
		Events:       events,
		BadPieces:    m.PeerBadPieces,
	}
	if !cfg.PeerExchangeOff {
		deps.Tracker = tracker.New(tracker.Config{Now: cfg.Now})
	}
	if cc != nil {
		// Calls only the leader serves go to it (server/forward.go).
		deps.Leader, deps.ControllerID = c.forwardTo, cc.cl.ID()
		ferryv1.RegisterClusterServiceServer(c.grpc, clusterService{Service: cluster.NewService(cc.cl, leaderSink{fleet: c.fleet, jobs: js}), deps: deps})
	}
	server.Register(c.grpc, deps)
	// c.grpc serves only peers with a client certificate; the others reach
	// enrollment alone, on the Front's public server.
	front := rpc.NewFront(c.grpcLis, grpcOpts)
	c.grpcLis = front
	ferryv1.RegisterEnrollmentServiceServer(front, server.NewEnrollmentService(deps, server.EnrollLimits{}))
	grpcMetrics.InitializeMetrics(c.grpc)
	ok = true
	return c, nil
}

// gossipLabel ties the gossip cluster to this installation's CA, so two
// Ferry installations never merge.
func gossipLabel(ca *pki.CA) string {
	pin := ca.Pin()
	return "ferry-" + pin[len("sha256:"):len("sha256:")+16]
}

func advertiseFrom(a *net.TCPAddr) string {
	host := "127.0.0.1"
	if !a.IP.IsUnspecified() {
		host = a.IP.String()
	} else if h, err := os.Hostname(); err == nil && h != "" {
		host = h
	}
	return net.JoinHostPort(host, fmt.Sprint(a.Port))
}

// ensureAdminCredential writes the bootstrap admin credential on first
// start and keeps its controller address current on later starts.
func (c *Controller) ensureAdminCredential() error {
	if cred, err := credential.Load(c.adminPath); err == nil {
		if cred.Controller == c.advertise {
			return nil
		}
		return credential.SetController(c.adminPath, c.advertise)
	} else if _, statErr := os.Stat(c.adminPath); statErr == nil {
		return fmt.Errorf("bootstrap admin credential: %w; move it away to have a new one written", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	cert, err := c.ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "admin"}, PublicKey: key.Public(), TTL: c.cfg.AdminCertTTL, Now: c.cfg.Now()})
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	return credential.Write(c.adminPath, c.advertise, c.ca.Cert, cert, keyPEM)
}

// replicasOrNil is the replicator as the server takes it: a nil interface
// without one.
func (c *Controller) replicasOrNil() server.Replicas {
	if c.replicas == nil {
		return nil
	}
	return c.replicas
}
