package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// The controller's serving certificate lives a year and is replaced two
// thirds into it (or with under 30 days left), at start or while running:
// a controller left running for a year must not lock every agent out.
const (
	servingCertTTL    = 365 * 24 * time.Hour
	servingMinLeft    = 30 * 24 * time.Hour
	servingCheckEvery = time.Hour
)

// servingDue reports whether a serving certificate should be replaced at now.
func servingDue(leaf *x509.Certificate, now time.Time) bool {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return !now.Before(leaf.NotBefore.Add(life*2/3)) || leaf.NotAfter.Sub(now) < servingMinLeft
}

// servingCert reuses the controller's certificate from the data dir until
// it is due for replacement, and issues a new one otherwise.
func (c *Controller) servingCert() (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(c.cfg.DataDir, "controller.crt"), filepath.Join(c.cfg.DataDir, "controller.key")
	if pair, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err == nil && !servingDue(leaf, c.cfg.Now()) && leaf.CheckSignatureFrom(c.ca.Cert) == nil {
			pair.Leaf = leaf
			pair.Certificate = append(pair.Certificate, c.ca.Cert.Raw)
			return &pair, nil
		}
	}
	return c.issueServingCert()
}

// issueServingCert signs a new serving certificate for the controller's
// names and writes it and its key to the data dir.
func (c *Controller) issueServingCert() (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(c.cfg.DataDir, "controller.crt"), filepath.Join(c.cfg.DataDir, "controller.key")
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	var dns []string
	var ips []net.IP
	names := append([]string{"localhost"}, c.cfg.ServerNames...)
	if h, err := os.Hostname(); err == nil {
		names = append(names, h)
	}
	if host, _, err := net.SplitHostPort(c.advertise); err == nil {
		names = append(names, host)
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else if n != "" {
			dns = append(dns, n)
		}
	}
	ips = append(ips, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	leaf, err := c.ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleController}, PublicKey: key.Public(), TTL: servingCertTTL, Now: c.cfg.Now(), DNSNames: dns, IPs: ips})
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(certPath, pki.EncodeCert(leaf), 0o644); err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, c.ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// renewServing replaces the serving certificate when it is due. New TLS
// handshakes present the new one at once; open connections (agent
// streams) keep the one they were made with, which is still valid.
func (c *Controller) renewServing() error {
	if !servingDue(c.serving.Load().Leaf, c.cfg.Now()) {
		return nil
	}
	next, err := c.issueServingCert()
	if err != nil {
		return err
	}
	c.serving.Store(next)
	c.log.Info("renewed the controller's serving certificate", "expires", next.Leaf.NotAfter)
	return nil
}

// renewServingLoop checks the serving certificate every c.renewEvery
// until ctx ends.
func (c *Controller) renewServingLoop(ctx context.Context) {
	t := time.NewTicker(c.renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.renewServing(); err != nil {
				c.log.Error("could not renew the controller's serving certificate; will retry (check that the data dir is writable)", "dir", c.cfg.DataDir, "err", err, "expires", c.serving.Load().Leaf.NotAfter, "retry_in", c.renewEvery)
			}
		}
	}
}
