package server

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
)

type tokenServer struct {
	ferryv1.UnimplementedTokenServiceServer
	d *Deps
}

func tokenProto(t store.TokenRecord) *ferryv1.Token {
	return &ferryv1.Token{
		Id: t.ID, Group: t.Group, ExpiresAt: timestamppb.New(t.ExpiresAt), MaxUses: t.MaxUses, Uses: t.Uses,
		Revoked: t.Revoked, CreatedAt: timestamppb.New(t.CreatedAt), CreatedBy: t.CreatedBy,
		Labels: t.Labels, AllowLabels: t.AllowLabels,
	}
}

func (s *tokenServer) CreateToken(ctx context.Context, req *ferryv1.CreateTokenRequest) (*ferryv1.CreateTokenResponse, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := pki.ValidateName("group", req.GetGroup()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := labels.Validate(req.GetLabels()); err != nil {
		return nil, toStatus(err)
	}
	if err := labels.ValidatePatterns(req.GetAllowLabels()); err != nil {
		return nil, toStatus(err)
	}
	ttl := s.d.TokenDefaultTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
		if ttl <= 0 || ttl > 30*24*time.Hour {
			return nil, status.Errorf(codes.InvalidArgument, "token TTL %s is out of range: use more than 0 and at most 720h", ttl)
		}
	}
	id, err := randomString(tokenIDLen)
	if err != nil {
		return nil, toStatus(err)
	}
	secret, err := randomString(tokenSecretLen)
	if err != nil {
		return nil, toStatus(err)
	}
	now := s.d.Now()
	rec := store.TokenRecord{ID: id, SecretHash: hashSecret(secret), Group: req.GetGroup(), ExpiresAt: now.Add(ttl),
		MaxUses: req.GetMaxUses(), CreatedAt: now, CreatedBy: c.Identity.String(),
		Labels: req.GetLabels(), AllowLabels: req.GetAllowLabels()}
	ev := s.d.auditEvent(ctx, "token.create", id, tokenDetail(rec))
	if err := s.d.Store.PutToken(rec, ev); err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	return &ferryv1.CreateTokenResponse{Token: tokenProto(rec), Secret: id + "." + secret, CaPin: s.d.CA.Pin()}, nil
}

// tokenDetail is what a token grants, for the audit log.
func tokenDetail(t store.TokenRecord) string {
	d := "group=" + t.Group
	if len(t.Labels) > 0 {
		d += " labels=" + labels.Format(t.Labels)
	}
	if len(t.AllowLabels) > 0 {
		d += " allow=" + strings.Join(t.AllowLabels, ",")
	}
	return d
}

func (s *tokenServer) ListTokens(ctx context.Context, _ *ferryv1.ListTokensRequest) (*ferryv1.ListTokensResponse, error) {
	ts, err := s.d.Store.Tokens()
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*ferryv1.Token, len(ts))
	for i, t := range ts {
		out[i] = tokenProto(t)
	}
	return &ferryv1.ListTokensResponse{Tokens: out}, nil
}

func (s *tokenServer) RevokeToken(ctx context.Context, req *ferryv1.RevokeTokenRequest) (*ferryv1.RevokeTokenResponse, error) {
	ev := s.d.auditEvent(ctx, "token.revoke", req.GetId(), "")
	t, err := s.d.Store.RevokeToken(req.GetId(), ev)
	if err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	return &ferryv1.RevokeTokenResponse{Token: tokenProto(t)}, nil
}

type certificateServer struct {
	ferryv1.UnimplementedCertificateServiceServer
	d *Deps
}

func (s *certificateServer) IssueAdminCertificate(ctx context.Context, req *ferryv1.IssueAdminCertificateRequest) (*ferryv1.IssueAdminCertificateResponse, error) {
	if err := pki.ValidateName("admin name", req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ttl := s.d.AdminCertTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
		if ttl <= 0 || ttl > 5*365*24*time.Hour {
			return nil, status.Errorf(codes.InvalidArgument, "certificate TTL %s is out of range: use more than 0 and at most 5 years", ttl)
		}
	}
	ev := s.d.auditEvent(ctx, "cert.issue", "admin/"+req.GetName(), "")
	cert, err := s.d.CA.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAdmin, Name: req.GetName()}, PublicKey: csr.PublicKey, TTL: ttl, Now: s.d.Now()})
	if err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	// Signing stores nothing: the entry is the whole record, and a
	// certificate whose issue is not on it is never handed out.
	ev.Detail = "serial=" + cert.SerialNumber.String()
	if err := s.d.unchanged(ev); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.IssueAdminCertificateResponse{CertificateDer: cert.Raw, CaCertificateDer: s.d.CA.Cert.Raw}, nil
}

func (s *certificateServer) GetCAInfo(ctx context.Context, _ *ferryv1.GetCAInfoRequest) (*ferryv1.GetCAInfoResponse, error) {
	return &ferryv1.GetCAInfoResponse{CaCertificateDer: s.d.CA.Cert.Raw, CaPin: s.d.CA.Pin()}, nil
}
