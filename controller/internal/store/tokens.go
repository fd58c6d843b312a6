package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
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

// TokenRecord is a join token as stored: the secret only as a hash.
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

// PutToken stores a new token; an existing ID is an error.
func (s *Store) PutToken(t TokenRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if b.Get([]byte(t.ID)) != nil {
			return fmt.Errorf("token %s exists", t.ID)
		}
		return putJSON(b, t.ID, t)
	})
}

// Tokens lists tokens, newest first.
func (s *Store) Tokens() ([]TokenRecord, error) {
	var out []TokenRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
			var t TokenRecord
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, err
}

// RevokeToken marks a token revoked.
func (s *Store) RevokeToken(id string) (TokenRecord, error) {
	var t TokenRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if err := getJSON(b, id, &t); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("token %q: %w; list tokens with `ferryctl token list`", id, ErrNotFound)
			}
			return err
		}
		t.Revoked = true
		return putJSON(b, id, t)
	})
	return t, err
}
