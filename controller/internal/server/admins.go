package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// Admins tracks revoked admin names. The CA backdates certificates by
// pki.Backdate, so a certificate counts as issued at NotBefore+Backdate.
type Admins struct {
	store   *store.Store
	mu      sync.RWMutex
	revoked map[string]time.Time
}

// NewAdmins loads the revocations.
func NewAdmins(s *store.Store) (*Admins, error) {
	rv, err := s.RevokedAdmins()
	if err != nil {
		return nil, fmt.Errorf("load admin revocations: %w", err)
	}
	return &Admins{store: s, revoked: rv}, nil
}

// Follow keeps the revocations current while ctx lasts: with the store in
// etcd, a revocation made through another controller applies here as soon
// as etcd tells of it (store.Follow; on bbolt it returns at once).
func (a *Admins) Follow(ctx context.Context, log func(err error)) {
	a.store.Follow(ctx, "revoked_admins", func() {
		rv, err := a.store.RevokedAdmins()
		if err != nil {
			log(err)
			return
		}
		a.mu.Lock()
		a.revoked = rv
		a.mu.Unlock()
	})
}

// Check refuses an admin certificate issued before its name was revoked.
func (a *Admins) Check(id pki.Identity, cert *x509.Certificate) error {
	if id.Role != pki.RoleAdmin {
		return nil
	}
	a.mu.RLock()
	at, ok := a.revoked[id.Name]
	a.mu.RUnlock()
	if ok && cert.NotBefore.Add(pki.Backdate).Before(at) {
		return fmt.Errorf("the credential of admin %s was revoked at %s; ask another admin for a new one (`ferryctl cert issue --admin %s`)", id.Name, at.UTC().Format(time.RFC3339), id.Name)
	}
	return nil
}

// revoke records the revocation with its audit entry ev, then refuses the
// name's older certificates.
func (a *Admins) revoke(name string, at time.Time, ev *ferryv1.AuditEvent) error {
	if err := a.store.RevokeAdmin(name, at, ev); err != nil {
		return err
	}
	a.mu.Lock()
	a.revoked[name] = at
	a.mu.Unlock()
	return nil
}

func (s *certificateServer) RevokeAdmin(ctx context.Context, req *ferryv1.RevokeAdminRequest) (*ferryv1.RevokeAdminResponse, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := pki.ValidateName("admin name", req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if c.Identity.Name == req.GetName() {
		return nil, status.Errorf(codes.FailedPrecondition, "admin %s cannot revoke its own credential: use another admin's", req.GetName())
	}
	// A second later than now, so a certificate issued this very second
	// (NotBefore has second precision) is covered too.
	at := s.d.Now().Add(time.Second).Truncate(time.Second)
	ev := s.d.auditEvent(ctx, "cert.revoke", "admin/"+req.GetName(), "")
	if err := s.d.Admins.revoke(req.GetName(), at, ev); err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	s.d.streams.recheck(pki.Identity{Role: pki.RoleAdmin, Name: req.GetName()})
	return &ferryv1.RevokeAdminResponse{RevokedAt: timestamppb.New(at)}, nil
}
