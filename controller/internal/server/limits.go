package server

import (
	"cmp"
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

// EnrollLimits bound enrollments per join token; rpc.Limits bound them per
// peer address. A zero field takes its value from DefaultEnrollLimits.
type EnrollLimits struct {
	PerToken ratelimit.Rate // Enroll calls per join token
	// LimitLoopback applies the limit to peers on loopback too (off by
	// default, as rpc.Limits.LimitLoopback).
	LimitLoopback bool
}

// DefaultEnrollLimits are the limits a zero EnrollLimits field stands for.
// A token enrolls a whole group, so its rate is above one address's.
var DefaultEnrollLimits = EnrollLimits{PerToken: ratelimit.Rate{PerSecond: 20, Burst: 200}}

// tokenLimits is a token bucket per join token ID, charged by every
// well-formed Enroll call naming it: a token's secret cannot be guessed,
// nor a leaked token used to flood the controller, faster than its rate.
type tokenLimits struct {
	rate          ratelimit.Rate
	buckets       *ratelimit.Limiter
	limitLoopback bool
}

func newTokenLimits(l EnrollLimits, now func() time.Time) *tokenLimits {
	l.PerToken = cmp.Or(l.PerToken, DefaultEnrollLimits.PerToken)
	return &tokenLimits{rate: l.PerToken, buckets: ratelimit.New(l.PerToken, now), limitLoopback: l.LimitLoopback}
}

// allow takes a turn for tokenID, or returns the ResourceExhausted status
// to refuse the call with.
func (t *tokenLimits) allow(ctx context.Context, tokenID string) error {
	if t == nil {
		return nil
	}
	if p, ok := peer.FromContext(ctx); ok && !t.limitLoopback {
		if _, loopback := ratelimit.Peer(p.Addr); loopback {
			return nil
		}
	}
	if t.buckets.Allow(tokenID) {
		return nil
	}
	return status.Errorf(codes.ResourceExhausted, "too many enrollment requests with join token %s (at most %v); wait a few seconds and retry", tokenID, t.rate)
}
