package store

import (
	"errors"
	"fmt"
	"sort"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var bucketTokens = []byte("tokens")

// ErrTokenInvalid is returned for a token that does not exist or whose
// secret is wrong; the two are not told apart.
var ErrTokenInvalid = errors.New("join token is not valid; create a new one with `ferryctl token create`")

// ErrTokenUnusable is matched (errors.Is) by EnrollNode's error for a
// token that is valid but revoked, expired or used up.
var ErrTokenUnusable = errors.New("join token cannot be used")

// unusableToken keeps Usable's message and adds ErrTokenUnusable.
type unusableToken struct{ error }

func (unusableToken) Is(target error) bool { return target == ErrTokenUnusable }

// TokenRecord is a join token as stored: the secret only as a hash. It is
// stored as a ferryv1.TokenRecord; the JSON tags are the format of schema
// 1 stores, which migrate reads once.
type TokenRecord struct {
	ID         string    `json:"id"`
	SecretHash []byte    `json:"secret_hash"`
	Group      string    `json:"group"`
	ExpiresAt  time.Time `json:"expires_at"`
	MaxUses    uint32    `json:"max_uses"`
	Uses       uint32    `json:"uses"`
	Revoked    bool      `json:"revoked"`
	CreatedAt  time.Time `json:"created_at"`
	CreatedBy  string    `json:"created_by"`
	// Labels are given to every node enrolled with the token; AllowLabels
	// ("key=glob") are the labels such a node may ask for itself.
	Labels      map[string]string `json:"labels,omitempty"`
	AllowLabels []string          `json:"allow_labels,omitempty"`
}

// Usable says why a token cannot be used now, or nil.
func (t TokenRecord) Usable(now time.Time) error {
	switch {
	case t.Revoked:
		return fmt.Errorf("join token %s was revoked; create a new one with `ferryctl token create --group %s`", t.ID, t.Group)
	case !now.Before(t.ExpiresAt):
		return fmt.Errorf("join token %s expired at %s; create a new one with `ferryctl token create --group %s`", t.ID, t.ExpiresAt.UTC().Format(time.RFC3339), t.Group)
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return fmt.Errorf("join token %s is used up (%d of %d uses); create a new one with `ferryctl token create --group %s`", t.ID, t.Uses, t.MaxUses, t.Group)
	}
	return nil
}

// PutToken stores a new token, with the action's audit entry (audit.go);
// an existing ID is an error.
func (s *Store) PutToken(t TokenRecord, ev *ferryv1.AuditEvent) error {
	return s.audited(ev, func(tx kvTx) error {
		b := tx.Bucket(bucketTokens)
		if b.Get([]byte(t.ID)) != nil {
			return fmt.Errorf("token %s exists", t.ID)
		}
		return putToken(b, t)
	})
}

// Tokens lists tokens, newest first.
func (s *Store) Tokens() ([]TokenRecord, error) {
	var out []TokenRecord
	err := s.kv.View(func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		recs, err := list[ferryv1.TokenRecord](tx.Bucket(bucketTokens), "token")
		for _, r := range recs {
			out = append(out, tokenFromProto(r))
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, err
}

// RevokeToken marks a token revoked, with the action's audit entry
// (audit.go).
func (s *Store) RevokeToken(id string, ev *ferryv1.AuditEvent) (TokenRecord, error) {
	var t TokenRecord
	err := s.audited(ev, func(tx kvTx) (err error) {
		b := tx.Bucket(bucketTokens)
		if t, err = getToken(b, id); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("token %q: %w; list tokens with `ferryctl token list`", id, ErrNotFound)
			}
			return err
		}
		t.Revoked = true
		return putToken(b, t)
	})
	return t, err
}

func getToken(b kvBucket, id string) (TokenRecord, error) {
	r, err := get[ferryv1.TokenRecord](b, "token", id)
	if err != nil {
		return TokenRecord{}, err
	}
	return tokenFromProto(r), nil
}

func putToken(b kvBucket, t TokenRecord) error { return put(b, "token", t.ID, tokenToProto(t)) }

func tokenToProto(t TokenRecord) *ferryv1.TokenRecord {
	return &ferryv1.TokenRecord{
		Id: t.ID, SecretHash: t.SecretHash, Group: t.Group, ExpiresAt: timestamp(t.ExpiresAt), MaxUses: t.MaxUses,
		Uses: t.Uses, Revoked: t.Revoked, CreatedAt: timestamp(t.CreatedAt), CreatedBy: t.CreatedBy,
		Labels: t.Labels, AllowLabels: t.AllowLabels,
	}
}

func tokenFromProto(r *ferryv1.TokenRecord) TokenRecord {
	return TokenRecord{
		ID: r.GetId(), SecretHash: r.GetSecretHash(), Group: r.GetGroup(), ExpiresAt: fromTimestamp(r.GetExpiresAt()), MaxUses: r.GetMaxUses(),
		Uses: r.GetUses(), Revoked: r.GetRevoked(), CreatedAt: fromTimestamp(r.GetCreatedAt()), CreatedBy: r.GetCreatedBy(),
		Labels: r.GetLabels(), AllowLabels: r.GetAllowLabels(),
	}
}
