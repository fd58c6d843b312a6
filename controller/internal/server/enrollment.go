package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
)

type enrollmentServer struct {
	ferryv1.UnimplementedEnrollmentServiceServer
	d      *Deps
	limits *tokenLimits // nil (Register's, for certificate holders): no limit per token
}

// NewEnrollmentService returns the enrollment service for peers without a
// client certificate (rpc.Front's public server), limited per join token.
func NewEnrollmentService(d *Deps, l EnrollLimits) ferryv1.EnrollmentServiceServer {
	return &enrollmentServer{d: d, limits: newTokenLimits(l, d.Now)}
}

// Join tokens look like kubeadm's: "<6-char id>.<16-char secret>".
const (
	tokenIDLen     = 6
	tokenSecretLen = 16
	tokenAlphabet  = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// randomString draws n characters uniformly from tokenAlphabet (bytes past
// the largest multiple of its size are rejected, so there is no modulo
// bias).
func randomString(n int) (string, error) {
	limit := byte(256 - 256%len(tokenAlphabet))
	out := make([]byte, 0, n)
	buf := make([]byte, 2*n)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		for _, c := range buf {
			if c < limit && len(out) < n {
				out = append(out, tokenAlphabet[int(c)%len(tokenAlphabet)])
			}
		}
	}
	return string(out), nil
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

func splitToken(tok string) (id, secret string, err error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(tok), ".")
	if !ok || len(id) != tokenIDLen || len(secret) != tokenSecretLen {
		return "", "", errors.New("join token is malformed: want <6 chars>.<16 chars> as printed by `ferryctl token create`")
	}
	return id, secret, nil
}

// enrollment is an EnrollRequest that passed validation.
type enrollment struct {
	tokenID, secret string
	csr             *x509.CertificateRequest
}

// parseEnroll validates an EnrollRequest from anyone on the network; its
// errors are status errors.
func parseEnroll(req *ferryv1.EnrollRequest) (enrollment, error) {
	id, secret, err := splitToken(req.GetToken())
	if err != nil {
		return enrollment{}, status.Error(codes.Unauthenticated, err.Error())
	}
	if err := pki.ValidateName("node ID", req.GetNodeId()); err != nil {
		return enrollment{}, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := labels.Validate(req.GetLabels()); err != nil {
		return enrollment{}, toStatus(err)
	}
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		return enrollment{}, status.Error(codes.InvalidArgument, err.Error())
	}
	return enrollment{tokenID: id, secret: secret, csr: csr}, nil
}

func (s *enrollmentServer) Enroll(ctx context.Context, req *ferryv1.EnrollRequest) (*ferryv1.EnrollResponse, error) {
	log := s.d.Logger.With("node", req.GetNodeId())
	e, err := parseEnroll(req)
	if err != nil {
		return nil, err
	}
	if err := s.limits.allow(ctx, e.tokenID); err != nil {
		return nil, err
	}
	now := s.d.Now()
	ident := pki.Identity{Role: pki.RoleAgent, Name: req.GetNodeId()}
	var cert []byte
	addr := ""
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	// The token ID names who acts (never its secret); the group is the
	// token's, filled in once it is read.
	ev := s.d.auditEventBy("token/"+e.tokenID, "node.enroll", req.GetNodeId(), "addr="+addr)
	rec, err := s.d.Store.EnrollNode(e.tokenID, func(t store.TokenRecord) error {
		if subtle.ConstantTimeCompare(t.SecretHash, hashSecret(e.secret)) != 1 {
			return store.ErrTokenInvalid
		}
		return nil
	}, now, func(t store.TokenRecord) (store.NodeRecord, error) {
		granted, err := labels.Grant(req.GetLabels(), t.Labels, t.AllowLabels)
		if err != nil {
			return store.NodeRecord{}, fmt.Errorf("join token %s: %w", t.ID, err)
		}
		c, err := s.d.CA.Sign(pki.SignRequest{Identity: ident, PublicKey: e.csr.PublicKey, TTL: s.d.AgentCertTTL, Now: now})
		if err != nil {
			return store.NodeRecord{}, err
		}
		cert = c.Raw
		ev.Detail = "group=" + t.Group + " addr=" + addr
		return store.NodeRecord{
			ID: req.GetNodeId(), Group: t.Group, Labels: granted, EnrolledAt: now, TokenID: t.ID,
			CertSerials: []string{c.SerialNumber.String()}, CertExpiresAt: c.NotAfter,
		}, nil
	}, ev)
	if err != nil {
		log.Warn("enrollment refused", "token", e.tokenID, "addr", addr, "err", err)
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	s.d.Fleet.Added(rec)
	log.Info("node enrolled", "group", rec.Group, "token", e.tokenID)
	return &ferryv1.EnrollResponse{
		NodeId:             rec.ID,
		Group:              rec.Group,
		CertificateDer:     cert,
		CaCertificateDer:   s.d.CA.Cert.Raw,
		GossipKey:          s.d.gossipKey().GetKey(),
		GossipClusterLabel: s.d.GossipLabel,
		Labels:             rec.Labels,
	}, nil
}
