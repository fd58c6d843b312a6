package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEnrollNodeTellsUnusableTokensApart(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		s := openBackend(t, backend)
		now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		ok := func(TokenRecord) error { return nil }
		cases := []struct {
			name  string
			tok   TokenRecord
			check func(TokenRecord) error
			is    error
			want  string
		}{
			{"revoked", TokenRecord{ID: "rev001", Group: "g", ExpiresAt: now.Add(time.Hour), Revoked: true}, ok, ErrTokenUnusable, "was revoked"},
			{"expired", TokenRecord{ID: "exp001", Group: "g", ExpiresAt: now}, ok, ErrTokenUnusable, "expired at"},
			{"used up", TokenRecord{ID: "use001", Group: "g", ExpiresAt: now.Add(time.Hour), MaxUses: 1, Uses: 1}, ok, ErrTokenUnusable, "is used up"},
			{"wrong secret", TokenRecord{ID: "sec001", Group: "g", ExpiresAt: now.Add(time.Hour)}, func(TokenRecord) error { return ErrTokenInvalid }, ErrTokenInvalid, "not valid"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if err := s.PutToken(tc.tok, nil); err != nil {
					t.Fatal(err)
				}
				_, err := s.EnrollNode(tc.tok.ID, tc.check, now, func(TokenRecord) (NodeRecord, error) {
					return NodeRecord{ID: "n-" + tc.tok.ID}, nil
				}, nil)
				if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("EnrollNode = %v, want %v mentioning %q", err, tc.is, tc.want)
				}
				if errors.Is(tc.is, ErrTokenInvalid) && errors.Is(err, ErrTokenUnusable) {
					t.Errorf("a wrong secret counts as an unusable token: %v", err)
				}
				if nodes, _ := s.Nodes(); len(nodes) != 0 {
					t.Errorf("refused enrollment stored nodes %v", nodes)
				}
			})
		}
	})
}
