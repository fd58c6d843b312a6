// Package enroll performs an agent's first contact with the controller:
// it pins the CA by hash (as kubeadm does), generates the node's key
// locally, sends a CSR with the join token and stores the signed
// certificate in the state dir. With several controllers it goes through
// the first that answers, and records every address for `run`.
package enroll

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/controllers"
	"github.com/ferrydeploy/ferry/agent/internal/identity"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Options are the enroll command's inputs.
type Options struct {
	// Controllers are the installation's controllers, each host:port
	// (items may be comma-separated); the first that answers enrolls
	// the node.
	Controllers []string
	Token       string
	CAPin       string // sha256:<hex>
	NodeID      string
	StateDir    string
	Labels      map[string]string
	Now         func() time.Time
}

// Enroll enrolls the node and saves its identity.
func Enroll(ctx context.Context, o Options) (*identity.Info, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if identity.Exists(o.StateDir) {
		return nil, fmt.Errorf("state dir %s already holds an enrolled identity; run `ferry-agent run --state-dir %s`, or remove the state dir to enroll again", o.StateDir, o.StateDir)
	}
	if err := pki.ValidateName("node ID", o.NodeID); err != nil {
		return nil, fmt.Errorf("%w (set it with --node-id)", err)
	}
	if err := labels.Validate(o.Labels); err != nil {
		return nil, fmt.Errorf("%w (set with --label)", err)
	}
	if len(o.Controllers) == 0 || o.Token == "" || o.CAPin == "" {
		return nil, errors.New("--controller, --token and --ca-pin are required; `ferryctl token create` prints the full command")
	}
	// Validate the pin's form and the addresses before any network
	// traffic.
	if err := pki.ValidatePin(o.CAPin); err != nil {
		return nil, err
	}
	addrs, err := controllers.Parse(o.Controllers)
	if err != nil {
		return nil, err
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: o.NodeID})
	if err != nil {
		return nil, err
	}
	req := &ferryv1.EnrollRequest{Token: o.Token, NodeId: o.NodeID, CsrDer: csr, Labels: o.Labels}
	var resp *ferryv1.EnrollResponse
	var pinned *x509.Certificate
	var via string
	var unreachable []string
	for _, addr := range addrs {
		resp, pinned, err = enrollAt(ctx, addr, o.CAPin, req)
		if err == nil {
			via = addr
			break
		}
		// A controller that answered refuses for all of them (they share
		// the tokens); only one that cannot be reached makes way for the
		// next.
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
			if s, ok := status.FromError(err); ok {
				return nil, fmt.Errorf("enroll at %s refused: %s", addr, s.Message())
			}
			return nil, fmt.Errorf("enroll at %s: %w", addr, err)
		}
		unreachable = append(unreachable, fmt.Sprintf("%s: %s", addr, status.Convert(err).Message()))
	}
	if resp == nil {
		return nil, fmt.Errorf("enroll: no controller answered; check that one runs and that this node reaches it (firewall, DNS, routes): %s", strings.Join(unreachable, "; "))
	}
	if pinned == nil {
		return nil, errors.New("enroll: the controller's CA was not verified against the pin")
	}
	ca, err := x509.ParseCertificate(resp.GetCaCertificateDer())
	if err != nil || !ca.Equal(pinned) {
		return nil, errors.New("enroll: the CA in the response differs from the pinned CA the connection used; refusing")
	}
	cert, err := x509.ParseCertificate(resp.GetCertificateDer())
	if err != nil {
		return nil, fmt.Errorf("enroll: certificate in response: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: o.Now()}); err != nil {
		return nil, fmt.Errorf("enroll: issued certificate does not verify against the CA: %w", err)
	}
	id, err := pki.ParseIdentity(cert)
	if err != nil || id.Role != pki.RoleAgent || id.Name != o.NodeID {
		return nil, fmt.Errorf("enroll: issued certificate names %v, want agent/%s", id, o.NodeID)
	}
	if pk, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pk.Equal(key.Public()) {
		return nil, errors.New("enroll: issued certificate is not for this node's key")
	}
	info := identity.Info{
		NodeID: resp.GetNodeId(), Group: resp.GetGroup(), Controller: via, Controllers: addrs,
		GossipKey: resp.GetGossipKey(), GossipLabel: resp.GetGossipClusterLabel(), Labels: resp.GetLabels(), EnrolledAt: o.Now(),
	}
	if err := identity.Save(o.StateDir, info, key, cert, ca); err != nil {
		return nil, err
	}
	return &info, nil
}

// enrollAt makes the enrollment call at one controller over TLS checked
// against the pin; it returns the CA the connection verified.
func enrollAt(ctx context.Context, addr, pin string, req *ferryv1.EnrollRequest) (*ferryv1.EnrollResponse, *x509.Certificate, error) {
	var pinned *x509.Certificate
	tlsConf := rpc.PinnedTLS(pin, func(ca *x509.Certificate) { pinned = ca })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }() // one call, made or failed by then
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := ferryv1.NewEnrollmentServiceClient(conn).Enroll(ctx, req)
	return resp, pinned, err
}
