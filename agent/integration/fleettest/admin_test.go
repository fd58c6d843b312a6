package fleettest

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// issueAdmin gets a credential for name from the controller, as
// `ferryctl cert issue` does (the key never leaves this process).
func (f *fleet) issueAdmin(name string) *tls.Config {
	f.t.Helper()
	key, _ := pki.NewKey()
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAdmin, Name: name})
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := ferryv1.NewCertificateServiceClient(f.admin).IssueAdminCertificate(context.Background(), &ferryv1.IssueAdminCertificateRequest{Name: name, CsrDer: csr})
	if err != nil {
		f.t.Fatalf("issue admin %s: %v", name, err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{resp.CertificateDer}, PrivateKey: key}
	return rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }, f.caPool())
}

// A revoked admin credential is refused on every RPC, including on a
// connection it opened before the revocation; a credential issued to the
// name afterwards works; an admin cannot lock itself out.
func TestAdminRevocation(t *testing.T) {
	f := newFleet(t, nil)
	ctx := context.Background()
	alice := f.dial(f.issueAdmin("alice"))
	if _, err := ferryv1.NewNodeServiceClient(alice).ListNodes(ctx, &ferryv1.ListNodesRequest{}); err != nil {
		t.Fatalf("alice before revocation: %v", err)
	}
	if _, err := ferryv1.NewCertificateServiceClient(alice).RevokeAdmin(ctx, &ferryv1.RevokeAdminRequest{Name: "alice"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("self-revocation: %v, want FailedPrecondition", err)
	}
	if _, err := ferryv1.NewCertificateServiceClient(f.admin).RevokeAdmin(ctx, &ferryv1.RevokeAdminRequest{Name: "alice"}); err != nil {
		t.Fatalf("revoke alice: %v", err)
	}
	_, err := ferryv1.NewNodeServiceClient(alice).ListNodes(ctx, &ferryv1.ListNodesRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("alice after revocation: %v, want PermissionDenied naming the revocation", err)
	}
	time.Sleep(1100 * time.Millisecond) // a new credential is issued after the revocation second
	again := f.dial(f.issueAdmin("alice"))
	if _, err := ferryv1.NewNodeServiceClient(again).ListNodes(ctx, &ferryv1.ListNodesRequest{}); err != nil {
		t.Errorf("alice's new credential: %v", err)
	}
	evs, err := ferryv1.NewAuditServiceClient(f.admin).ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs.Events {
		if e.Action == "cert.revoke" && e.Target == "admin/alice" && e.Outcome == "ok" && e.Actor == "admin/admin" {
			found = true
		}
	}
	if !found {
		t.Errorf("the revocation is not in the audit log: %v", evs.Events)
	}
}

// Revoking an admin ends the streams its credential holds open (here
// `ferryctl nodes -w`) within seconds, with PermissionDenied naming the
// revocation, as a new call gets.
func TestRevocationEndsOpenStreams(t *testing.T) {
	f := newFleet(t, nil)
	f.enroll("n1", f.token("staging", 1))
	ctx := context.Background()
	alice := f.dial(f.issueAdmin("alice"))
	watch, err := ferryv1.NewNodeServiceClient(alice).WatchNodes(ctx, &ferryv1.WatchNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil { // n1, as it is now
		t.Fatalf("watch before the revocation: %v", err)
	}
	revoked := time.Now()
	if _, err := ferryv1.NewCertificateServiceClient(f.admin).RevokeAdmin(ctx, &ferryv1.RevokeAdminRequest{Name: "alice"}); err != nil {
		t.Fatalf("revoke alice: %v", err)
	}
	for err == nil {
		_, err = watch.Recv()
	}
	took := time.Since(revoked)
	t.Logf("alice's watch ended %v after the revocation: %v", took, err)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "admin alice was revoked at") {
		t.Errorf("alice's watch ended with %v, want PermissionDenied naming the revocation", err)
	}
	if took > 5*time.Second {
		t.Errorf("alice's watch ended %v after the revocation, want within 5s", took)
	}
}
