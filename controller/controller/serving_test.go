package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/pki"
)

const servingDay = 24 * time.Hour

// A controller left running renews its serving certificate two thirds
// into its lifetime, with no restart: a client connecting afterwards sees
// a certificate that expires later, and so would a restarted controller.
func TestServingCertRenewedWhileRunning(t *testing.T) {
	var offset atomic.Int64 // how far the injected clock is ahead of time.Now
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	c, err := New(Config{DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Now: now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c.renewEvery = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	first := servedCert(t, c, now)
	if got := first.NotAfter.Sub(now()); got < 364*servingDay {
		t.Fatalf("first serving certificate expires in %v, want about a year", got)
	}
	// Before the two-thirds mark nothing changes.
	offset.Store(int64(200 * servingDay))
	if err := c.renewServing(); err != nil {
		t.Fatal(err)
	}
	if got := servedCert(t, c, now); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("serving certificate replaced at day 200, before two thirds of its lifetime")
	}

	offset.Store(int64(250 * servingDay))
	deadline := time.Now().Add(10 * time.Second)
	var renewed *x509.Certificate
	for {
		renewed = servedCert(t, c, now)
		if renewed.SerialNumber.Cmp(first.SerialNumber) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serving certificate not renewed within 10s at day 250 of 365")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !renewed.NotAfter.After(first.NotAfter.Add(200 * servingDay)) {
		t.Errorf("renewed certificate expires %v, want about a year after day 250 (the first expired %v)", renewed.NotAfter, first.NotAfter)
	}
	onDisk, err := os.ReadFile(filepath.Join(c.cfg.DataDir, "controller.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if saved, err := pki.DecodeCert(onDisk); err != nil || saved.SerialNumber.Cmp(renewed.SerialNumber) != 0 {
		t.Errorf("controller.crt is not the renewed certificate (%v); a restart would go back to the old one", err)
	}
}

// servedCert connects as a client would, verifying the chain against the
// CA at the injected time, and returns the controller's certificate.
func servedCert(t *testing.T, c *Controller, now func() time.Time) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", c.GRPCAddr(), &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: c.ca.Pool(), ServerName: pki.ControllerServerName,
		NextProtos: []string{"h2"}, Time: now,
	})
	if err != nil {
		t.Fatalf("TLS to the controller: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func TestServingDue(t *testing.T) {
	issued := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: issued, NotAfter: issued.Add(servingCertTTL)}
	short := &x509.Certificate{NotBefore: issued, NotAfter: issued.Add(40 * servingDay)}
	for _, tc := range []struct {
		name string
		leaf *x509.Certificate
		at   time.Time
		want bool
	}{
		{"new", leaf, issued.Add(servingDay), false},
		{"just before two thirds", leaf, issued.Add(servingCertTTL*2/3 - time.Second), false},
		{"at two thirds", leaf, issued.Add(servingCertTTL * 2 / 3), true},
		{"expired", leaf, issued.Add(servingCertTTL + servingDay), true},
		{"short-lived, 29 days left", short, issued.Add(11 * servingDay), true},
		{"short-lived, 31 days left", short, issued.Add(9 * servingDay), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := servingDue(tc.leaf, tc.at); got != tc.want {
				t.Errorf("servingDue at %v = %v, want %v", tc.at, got, tc.want)
			}
		})
	}
}
