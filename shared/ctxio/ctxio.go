// Package ctxio makes long copies stop when their context ends.
package ctxio

import (
	"context"
	"io"
)

// NewReader returns a reader that reads from r until ctx ends, and then
// fails with ctx.Err(). The check is per Read call, so a copy through it
// stops within one buffer.
func NewReader(ctx context.Context, r io.Reader) io.Reader {
	return reader{ctx, r}
}

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
