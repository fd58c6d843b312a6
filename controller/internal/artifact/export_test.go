package artifact

import (
	"io"
	"time"
)

// Hooks for the tests in package artifact_test, which drive the store
// through its gRPC service (package server, which imports this one).

func (s *Store) TmpDir() string  { return s.tmpDir }
func (s *Store) BlobDir() string { return s.blobDir }

func (s *Store) SetNow(now func() time.Time) { s.now = now }

// WithWrapTemp returns cfg with the writer of each push's temp file
// wrapped, to simulate a full disk.
func WithWrapTemp(cfg Config, wrap func(io.Writer) io.Writer) Config {
	cfg.wrapTemp = wrap
	return cfg
}

// NodeDownloads is how many downloads of node stream or wait now.
func (d *Downloader) NodeDownloads(node string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byNode[node]
}
