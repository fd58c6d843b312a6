package e2e

import (
	"encoding/json"
	"strconv"
	"time"
)

// Token is a join token created with `ferryctl token create -o json`.
type Token struct {
	ID     string // the public part, for `ferryctl token revoke`
	Secret string // what `ferry-agent enroll --token` takes
	CAPin  string // what `ferry-agent enroll --ca-pin` takes
	Group  string
}

// TokenOptions are the flags of `ferryctl token create`.
type TokenOptions struct {
	Group string
	Uses  int           // 0: unlimited
	TTL   time.Duration // 0: ferryctl's default
	// Labels are granted to every node (--label); AllowLabels are what a
	// node may ask for (--allow-label KEY=GLOB).
	Labels      []string
	AllowLabels []string
}

// CreateToken runs `ferryctl token create` and fails the test unless it
// succeeds.
func (h *Harness) CreateToken(o TokenOptions) Token {
	h.t.Helper()
	args := []string{"token", "create", "--group", o.Group, "-o", "json"}
	if o.Uses > 0 {
		args = append(args, "--uses", strconv.Itoa(o.Uses))
	}
	if o.TTL > 0 {
		args = append(args, "--ttl", o.TTL.String())
	}
	for _, l := range o.Labels {
		args = append(args, "--label", l)
	}
	for _, l := range o.AllowLabels {
		args = append(args, "--allow-label", l)
	}
	out := h.MustCtl(args...)
	var resp struct {
		Token struct {
			ID    string `json:"id"`
			Group string `json:"group"`
		} `json:"token"`
		Secret string `json:"secret"`
		CAPin  string `json:"ca_pin"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		h.t.Fatalf("ferryctl token create -o json: %v\n%s", err, out)
	}
	if resp.Secret == "" || resp.CAPin == "" || resp.Token.ID == "" {
		h.t.Fatalf("ferryctl token create -o json: no id, secret or ca_pin in\n%s", out)
	}
	return Token{ID: resp.Token.ID, Secret: resp.Secret, CAPin: resp.CAPin, Group: resp.Token.Group}
}

// Token creates a join token for group, good for uses enrollments
// (0: unlimited).
func (h *Harness) Token(group string, uses int) Token {
	h.t.Helper()
	return h.CreateToken(TokenOptions{Group: group, Uses: uses})
}
