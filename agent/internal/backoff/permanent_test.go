package backoff

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
)

// A retry loop finds a PermanentError through any wrapping and stops with
// the error inside, which still matches what it wraps.
func TestPermanent(t *testing.T) {
	inner := fmt.Errorf("write staging file: %w", fs.ErrPermission)
	err := fmt.Errorf("stream: %w", Permanent(inner))
	var pe *PermanentError
	if !errors.As(err, &pe) || pe.Err != inner { //nolint:errorlint // the very error wrapped, not one that matches it
		t.Fatalf("errors.As(%v) found %v, want the permanent error around %v", err, pe, inner)
	}
	if err.Error() != "stream: write staging file: permission denied" {
		t.Errorf("message %q adds words to the wrapped error's", err)
	}
	if !errors.Is(err, fs.ErrPermission) {
		t.Errorf("%v does not match the error it wraps", err)
	}
	if errors.As(inner, &pe) {
		t.Errorf("a plain error counts as permanent")
	}
}
