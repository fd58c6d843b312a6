package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/chunk"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

func TestPushThenDownload(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(1, 3*artifact.ChunkSize+123)
	want := sha(data)
	resp, err := h.push("go1.20.3.linux-amd64.tar.gz", "1.20.3", data, want)
	if err != nil {
		t.Fatal(err)
	}
	a := resp.Artifact
	if !resp.Created || a.Digest != want || a.Size != uint64(len(data)) || a.PushedBy != "admin/alice" || a.PushedAt == nil {
		t.Fatalf("push response = %v", resp)
	}
	blob, err := os.ReadFile(filepath.Join(h.dir, "artifacts", "sha256", strings.TrimPrefix(want, sha256digest.Prefix)))
	if err != nil || !bytes.Equal(blob, data) {
		t.Fatalf("blob on disk: %d bytes, err %v; want the pushed bytes", len(blob), err)
	}
	h.checkConsistent()

	ctx := context.Background()
	for _, off := range []uint64{0, 1, artifact.ChunkSize, uint64(len(data)) - 1, uint64(len(data))} {
		t.Run(fmt.Sprintf("offset %d", off), func(t *testing.T) {
			before := h.served.n.Load()
			got, err := h.download(ctx, want, off)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[off:]) {
				t.Fatalf("downloaded %d bytes from %d, not the artifact's tail (%d bytes)", len(got), off, len(data[off:]))
			}
			if served := h.served.n.Load() - before; served != int64(len(data))-int64(off) {
				t.Errorf("bytes served counter grew by %d, want %d", served, len(data)-int(off))
			}
		})
	}

	ev := h.audit.list()
	if len(ev) != 1 || ev[0] != "admin/alice artifact.push go1.20.3.linux-amd64.tar.gz@1.20.3 ok" {
		t.Errorf("audit = %q", ev)
	}
}

// An agent may ask for smaller chunks; the controller bounds what it
// asks for to [32 KiB, 1 MiB], and 0 (an agent from before the field)
// gets 1 MiB.
func TestDownloadChunkSize(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(2, 2*artifact.ChunkSize+777)
	want := sha(data)
	if _, err := h.push("tool.tar.gz", "1", data, want); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ask  uint32
		want int
	}{
		{0, chunk.Max},
		{1000, chunk.Min},
		{200 << 10, 200 << 10},
		{8 << 20, chunk.Max},
	} {
		t.Run(fmt.Sprintf("ask %d", tc.ask), func(t *testing.T) {
			stream, err := ferryv1.NewAgentServiceClient(h.agent).DownloadArtifact(context.Background(), &ferryv1.DownloadArtifactRequest{Digest: want, Offset: 5, MaxChunkSize: tc.ask})
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			for {
				m, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				last := m.Offset+uint64(len(m.Data)) == m.Size
				if len(m.Data) != tc.want && !(last && len(m.Data) < tc.want) {
					t.Fatalf("chunk at %d has %d bytes, want %d", m.Offset, len(m.Data), tc.want)
				}
				got = append(got, m.Data...)
			}
			if !bytes.Equal(got, data[5:]) {
				t.Errorf("downloaded %d bytes, not the artifact's tail (%d bytes)", len(got), len(data)-5)
			}
		})
	}
}

func TestDownloadErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(2, 1000)
	if _, err := h.push("a", "1", data, ""); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name   string
		digest string
		offset uint64
		code   codes.Code
		msg    string
	}{
		{"unknown digest", sha([]byte("nope")), 0, codes.NotFound, "no artifact has digest"},
		{"offset past the end", sha(data), 1001, codes.OutOfRange, "past its end"},
		{"malformed digest", "md5:abc", 0, codes.InvalidArgument, "must start with"},
		{"short digest", "sha256:abc", 0, codes.InvalidArgument, "64 hex"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.download(ctx, tc.digest, tc.offset)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %s mentioning %q", err, tc.code, tc.msg)
			}
		})
	}
	t.Run("admin certificate may not download", func(t *testing.T) {
		stream, err := ferryv1.NewAgentServiceClient(h.admin).DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: sha(data)})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v, want PermissionDenied", err)
		}
	})
	t.Run("agent certificate may not push", func(t *testing.T) {
		_, err := pushclient.Push(ctx, ferryv1.NewArtifactServiceClient(h.agent), &ferryv1.PushArtifactHeader{Name: "x", Version: "1"}, bytes.NewReader(data), nil)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v, want PermissionDenied", err)
		}
	})
}

func TestPushRefusals(t *testing.T) {
	good := randomBytes(3, 2*artifact.ChunkSize+7)
	other := randomBytes(4, 5000)
	cases := []struct {
		name    string
		hdr     *ferryv1.PushArtifactHeader
		body    []byte
		code    codes.Code
		want    []string // substrings of the message
		records int      // records afterwards (the harness holds a@1 = good)
	}{
		{
			name: "wrong checksum",
			hdr:  &ferryv1.PushArtifactHeader{Name: "b", Version: "1", Sha256: strings.TrimPrefix(sha(other), sha256digest.Prefix)},
			body: good, code: codes.InvalidArgument,
			want:    []string{"sha256 mismatch", "got " + sha(good), "want " + sha(other), "the upload was discarded"},
			records: 1,
		},
		{
			name: "checksum with prefix and upper case still compared",
			hdr:  &ferryv1.PushArtifactHeader{Name: "b", Version: "1", Sha256: strings.ToUpper(sha(other)[7:])},
			body: good, code: codes.InvalidArgument, want: []string{"sha256 mismatch"}, records: 1,
		},
		{
			name: "fewer bytes than declared",
			hdr:  &ferryv1.PushArtifactHeader{Name: "b", Version: "1", Size: uint64(len(other)) + 1},
			body: other, code: codes.InvalidArgument, want: []string{"5000 bytes arrived, 5001 were declared", "discarded"}, records: 1,
		},
		{
			name: "more bytes than declared",
			hdr:  &ferryv1.PushArtifactHeader{Name: "b", Version: "1", Size: 10},
			body: other, code: codes.InvalidArgument, want: []string{"more than the declared 10 bytes"}, records: 1,
		},
		{
			name: "same version, other bytes",
			hdr:  &ferryv1.PushArtifactHeader{Name: "a", Version: "1"},
			body: other, code: codes.AlreadyExists,
			want:    []string{"a@1 already exists with different bytes", sha(good), sha(other), "--version"},
			records: 1,
		},
		{
			name: "same version, other declared checksum (refused before upload)",
			hdr:  &ferryv1.PushArtifactHeader{Name: "a", Version: "1", Sha256: sha(other)},
			body: other, code: codes.AlreadyExists, want: []string{"already exists"}, records: 1,
		},
		{"no name", &ferryv1.PushArtifactHeader{Version: "1"}, other, codes.InvalidArgument, []string{"name is empty"}, 1},
		{"no version", &ferryv1.PushArtifactHeader{Name: "b"}, other, codes.InvalidArgument, []string{"version is empty"}, 1},
		{"@ in name", &ferryv1.PushArtifactHeader{Name: "b@2", Version: "1"}, other, codes.InvalidArgument, []string{"may not contain"}, 1},
		{"slash in version", &ferryv1.PushArtifactHeader{Name: "b", Version: "../1"}, other, codes.InvalidArgument, []string{"may not contain"}, 1},
		{"bad checksum syntax", &ferryv1.PushArtifactHeader{Name: "b", Version: "1", Sha256: "xyz"}, other, codes.InvalidArgument, []string{"64 hex digits"}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{})
			if _, err := h.push("a", "1", good, ""); err != nil {
				t.Fatal(err)
			}
			_, err := pushclient.Push(context.Background(), h.artifacts(), tc.hdr, bytes.NewReader(tc.body), nil)
			if status.Code(err) != tc.code {
				t.Fatalf("err = %v, want code %s", err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if recs, _ := h.st.List(""); len(recs) != tc.records {
				t.Errorf("%d records after a refused push, want %d", len(recs), tc.records)
			}
			h.checkConsistent()
			if ev := h.audit.list(); len(ev) != 2 || !strings.HasSuffix(ev[1], " refused") {
				t.Errorf("audit = %q, want the refusal recorded", ev)
			}
		})
	}
}

func TestPushHeaderMustComeFirst(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, tc := range []struct {
		name string
		msgs []*ferryv1.PushArtifactRequest
		want string
	}{
		{"chunk first", []*ferryv1.PushArtifactRequest{{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: []byte("x")}}}, "first message of a push must be the header"},
		{"nothing", nil, "empty push"},
		{"two headers", []*ferryv1.PushArtifactRequest{
			{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{Name: "a", Version: "1"}}},
			{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{Name: "a", Version: "1"}}},
		}, "one header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := h.artifacts().PushArtifact(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range tc.msgs {
				if err := stream.Send(m); err != nil {
					break
				}
			}
			_, err = stream.CloseAndRecv()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want InvalidArgument mentioning %q", err, tc.want)
			}
			h.checkConsistent()
		})
	}
}

func TestPushSameBytesAgain(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(5, artifact.ChunkSize+1)
	first, err := h.push("tool", "1.0", data, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, sum := range []string{"", sha(data)} { // uploaded and compared; settled from the declared checksum
		again, err := h.push("tool", "1.0", data, sum)
		if err != nil {
			t.Fatal(err)
		}
		if again.Created || !proto.Equal(again.Artifact, first.Artifact) {
			t.Errorf("second push (declared %q) = %v, want the first record unchanged, created=false", sum, again)
		}
	}
	// The same bytes under another name share the blob.
	alias, err := h.push("tool-copy", "1.0", data, sha(data))
	if err != nil || !alias.Created || alias.Artifact.Digest != first.Artifact.Digest {
		t.Fatalf("alias push = %v, %v", alias, err)
	}
	if blobs, _ := os.ReadDir(h.st.BlobDir()); len(blobs) != 1 {
		t.Errorf("%d blobs for one content, want 1", len(blobs))
	}
	h.checkConsistent()
}

// slowReader hands out data in small pieces and blocks after limit bytes
// until release is closed.
type slowReader struct {
	data    []byte
	limit   int
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if r.limit <= 0 {
		r.once.Do(func() { close(r.reached) })
		<-r.release
		return 0, errors.New("reader released")
	}
	n := min(len(p), len(r.data), r.limit, 64<<10)
	copy(p, r.data[:n])
	r.data, r.limit = r.data[n:], r.limit-n
	return n, nil
}

func TestPushClientDisconnects(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(6, 4*artifact.ChunkSize)
	r := &slowReader{data: data, limit: 2*artifact.ChunkSize + 100, reached: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := pushclient.Push(ctx, h.artifacts(), &ferryv1.PushArtifactHeader{Name: "big", Version: "1", Size: uint64(len(data))}, r, nil)
		done <- err
	}()
	<-r.reached
	// Wait until the controller has written what was sent, so the cut
	// happens mid-upload, with a temp file on disk.
	waitFor(t, "a temp file with data", func() bool {
		es, _ := os.ReadDir(h.st.TmpDir())
		if len(es) != 1 {
			return false
		}
		fi, err := es[0].Info()
		return err == nil && fi.Size() >= artifact.ChunkSize
	})
	cancel()
	close(r.release)
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("push err = %v, want Canceled", err)
	}
	waitFor(t, "the controller to discard the upload", func() bool {
		es, _ := os.ReadDir(h.st.TmpDir())
		return len(es) == 0
	})
	waitFor(t, "the refusal to be audited", func() bool { return len(h.audit.list()) == 1 })
	if _, err := h.st.Resolve("big@1"); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("after a cut push, resolve big@1: %v, want not found", err)
	}
	h.checkConsistent()
	// The same push then works.
	if resp, err := h.push("big", "1", data, sha(data)); err != nil || !resp.Created {
		t.Fatalf("push after the cut: %v, %v", resp, err)
	}
	h.checkConsistent()
}

func TestRacingPushes(t *testing.T) {
	t.Run("same bytes", func(t *testing.T) {
		h := newHarness(t, harnessOpts{})
		data := randomBytes(7, 3*artifact.ChunkSize)
		const n = 4
		var wg sync.WaitGroup
		resps := make([]*ferryv1.PushArtifactResponse, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resps[i], errs[i] = h.push("same", "1", data, "")
			}()
		}
		wg.Wait()
		created := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("push %d: %v", i, errs[i])
			}
			if resps[i].Artifact.Digest != sha(data) {
				t.Errorf("push %d stored %s", i, resps[i].Artifact.Digest)
			}
			if resps[i].Created {
				created++
			}
		}
		if created != 1 {
			t.Errorf("%d pushes report created, want exactly 1", created)
		}
		h.checkConsistent()
	})
	t.Run("different bytes, same version", func(t *testing.T) {
		h := newHarness(t, harnessOpts{})
		bodies := [][]byte{randomBytes(8, 2*artifact.ChunkSize), randomBytes(9, 2*artifact.ChunkSize+1)}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range bodies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = h.push("contested", "1", bodies[i], "")
			}()
		}
		wg.Wait()
		var won []int
		for i, err := range errs {
			switch status.Code(err) {
			case codes.OK:
				won = append(won, i)
			case codes.AlreadyExists:
			default:
				t.Errorf("push %d: %v, want success or AlreadyExists", i, err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("%d pushes won, want 1 (errors %v)", len(won), errs)
		}
		a, err := h.st.Resolve("contested@1")
		if err != nil || a.Digest != sha(bodies[won[0]]) {
			t.Fatalf("contested@1 = %v, %v; want the winner's bytes", a, err)
		}
		h.checkConsistent() // the loser's blob is not left behind
	})
}

// enospcAfter fails writes with ENOSPC once limit bytes were written, like
// a full file system.
func enospcAfter(limit int) func(io.Writer) io.Writer {
	return func(w io.Writer) io.Writer { return &fullDisk{w: w, left: limit} }
}

type fullDisk struct {
	w    io.Writer
	left int
}

func (f *fullDisk) Write(p []byte) (int, error) {
	if len(p) > f.left {
		n, _ := f.w.Write(p[:f.left])
		f.left = 0
		return n, &os.PathError{Op: "write", Path: "push", Err: syscall.ENOSPC}
	}
	f.left -= len(p)
	return f.w.Write(p)
}

func TestPushDiskFull(t *testing.T) {
	h := newHarness(t, harnessOpts{wrapTemp: enospcAfter(artifact.ChunkSize + 10)})
	data := randomBytes(10, 3*artifact.ChunkSize)
	_, err := h.push("big", "1", data, sha(data))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("err = %v, want ResourceExhausted naming the full disk", err)
	}
	h.checkConsistent()
	if recs, _ := h.st.List(""); len(recs) != 0 {
		t.Errorf("records after a failed push: %v", recs)
	}
	// What fits is still accepted.
	small := randomBytes(11, 1000)
	if _, err := h.push("small", "1", small, sha(small)); err != nil {
		t.Fatal(err)
	}
	h.checkConsistent()
}

// TestPushDiskFullTmpfs fills a real, tiny file system (root only).
func TestPushDiskFullTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs; TestPushDiskFull covers the same with a simulated disk")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	h := newHarness(t, harnessOpts{dataDir: dir})
	data := randomBytes(12, 4*artifact.ChunkSize)
	_, err := h.push("big", "1", data, "")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("err = %v, want ResourceExhausted", err)
	}
	h.checkConsistent()
	small := randomBytes(13, artifact.ChunkSize)
	if _, err := h.push("small", "1", small, sha(small)); err != nil {
		t.Fatalf("a push that fits after the failure: %v", err)
	}
	h.checkConsistent()
}

func TestStartupRemovesLeftovers(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(14, 100)
	if _, err := h.push("kept", "1", data, ""); err != nil {
		t.Fatal(err)
	}
	// What a crash leaves: a temp file mid-upload, and a blob renamed into
	// place whose record was never committed.
	if err := os.WriteFile(filepath.Join(h.st.TmpDir(), "push-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	orphan := []byte("orphan")
	if err := os.WriteFile(filepath.Join(h.st.BlobDir(), strings.TrimPrefix(sha(orphan), sha256digest.Prefix)), orphan, 0o600); err != nil {
		t.Fatal(err)
	}
	h.open(harnessOpts{})
	h.checkConsistent()
	if a, err := h.st.Resolve("kept@1"); err != nil || a.Digest != sha(data) {
		t.Fatalf("kept@1 after restart: %v, %v", a, err)
	}
}

func TestResolve(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	now := time.Now()
	tick := 0
	h.st.SetNow(func() time.Time { tick++; return now.Add(time.Duration(tick) * time.Second) })
	// Find two contents whose digests share their first hex digit.
	var first, second []byte
	seen := map[byte][]byte{}
	for i := 0; second == nil; i++ {
		b := []byte(fmt.Sprint("content ", i))
		c := sha(b)[len(sha256digest.Prefix)]
		if prev, ok := seen[c]; ok {
			first, second = prev, b
		}
		seen[c] = b
	}
	for _, p := range []struct {
		name, version string
		data          []byte
	}{{"app", "1.0", first}, {"app", "2.0", second}, {"solo", "1", []byte("solo")}, {"alias", "1", []byte("solo")}} {
		if _, err := h.push(p.name, p.version, p.data, ""); err != nil {
			t.Fatal(err)
		}
	}
	d1, d2, ds := sha(first), sha(second), sha([]byte("solo"))
	cases := []struct {
		ref    string
		latest string // ResolveArtifact's answer: name@version, or "!" and an error substring
		strict string // Resolve's answer
	}{
		{"app@1.0", "app@1.0", "app@1.0"},
		{"app@3.0", "!not found", "!not found"},
		{"app", "app@2.0", "!matches 2 artifacts"},
		{"solo", "solo@1", "solo@1"},
		{d1[:len(sha256digest.Prefix)+20], "app@1.0", "app@1.0"},
		{d2[:len(sha256digest.Prefix)+20], "app@2.0", "app@2.0"},
		{d1[:len(sha256digest.Prefix)+1], "!matches", "!app@1.0"},
		{ds[:len(sha256digest.Prefix)+10], "!matches 2 artifacts", "!alias@1 ("},
		{"sha256:", "!give hex digits", "!give hex digits"},
		{"sha256:xyz", "!give hex digits", "!give hex digits"},
		{"", "!empty", "!empty"},
	}
	for _, tc := range cases {
		t.Run(tc.ref, func(t *testing.T) {
			check := func(what string, a *ferryv1.Artifact, err error, want string) {
				t.Helper()
				if strings.HasPrefix(want, "!") {
					if err == nil || !strings.Contains(err.Error(), want[1:]) {
						t.Errorf("%s: %v, %v; want an error mentioning %q", what, a, err, want[1:])
					}
					return
				}
				if err != nil || artifact.Key(a) != want {
					t.Errorf("%s: %v, %v; want %s", what, a, err, want)
				}
			}
			a, err := h.st.ResolveArtifact(tc.ref)
			check("ResolveArtifact", a, err, tc.latest)
			a, err = h.st.Resolve(tc.ref)
			check("Resolve", a, err, tc.strict)
		})
	}
}

func putPackage(t *testing.T, db *store.Store, name, version, digest string) {
	t.Helper()
	if _, err := db.AddPackage(&ferryv1.Package{Name: name, Version: version, Artifact: &ferryv1.ArtifactRef{Digest: digest}}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestDelete(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	data, other := randomBytes(15, 5000), randomBytes(16, 6000)
	for _, p := range []struct {
		n    string
		data []byte
	}{{"go", data}, {"go-alias", data}, {"other", other}} {
		if _, err := h.push(p.n, "1", p.data, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Without packages nothing references anything.
	if _, err := h.artifacts().DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: "other@1"}); err != nil {
		t.Fatal(err)
	}
	h.checkConsistent()

	putPackage(t, h.db, "go", "1.20.3", sha(data))
	putPackage(t, h.db, "unrelated", "1", sha(other))
	for _, ref := range []string{"go@1", "go-alias@1"} {
		_, err := h.artifacts().DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: ref})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "used by package go@1.20.3") {
			t.Fatalf("rm %s while a package uses it: %v, want FailedPrecondition naming go@1.20.3", ref, err)
		}
	}
	got, err := h.artifacts().GetArtifact(ctx, &ferryv1.GetArtifactRequest{Ref: "go@1"})
	if err != nil || len(got.ReferencedBy) != 1 || got.ReferencedBy[0] != "go@1.20.3" {
		t.Fatalf("inspect go@1 = %v, %v; want referenced by go@1.20.3", got, err)
	}
	if _, err := h.db.DeletePackage("go", "1.20.3", nil); err != nil {
		t.Fatal(err)
	}
	// Removing one of two names keeps the shared blob.
	if _, err := h.artifacts().DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: "go@1"}); err != nil {
		t.Fatal(err)
	}
	h.checkConsistent()
	if _, err := h.download(ctx, sha(data), 0); err != nil {
		t.Fatalf("download after removing one of two names: %v", err)
	}
	// Removing the last one removes the bytes; the prefix form works.
	resp, err := h.artifacts().DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: sha(data)[:20]})
	if err != nil || artifact.Key(resp.Artifact) != "go-alias@1" {
		t.Fatalf("rm by digest prefix: %v, %v", resp, err)
	}
	h.checkConsistent()
	if blobs, _ := os.ReadDir(h.st.BlobDir()); len(blobs) != 0 {
		t.Errorf("%d blobs left after removing every artifact", len(blobs))
	}
	if _, err := h.download(ctx, sha(data), 0); status.Code(err) != codes.NotFound {
		t.Errorf("download of a removed artifact: %v, want NotFound", err)
	}
	if _, err := h.artifacts().DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: "go@1"}); status.Code(err) != codes.NotFound {
		t.Errorf("rm twice: %v, want NotFound", err)
	}
}

func TestListNewestFirst(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	now := time.Now()
	tick := 0
	h.st.SetNow(func() time.Time { tick++; return now.Add(time.Duration(tick) * time.Second) })
	for i, n := range []string{"a", "b", "a"} {
		if _, err := h.push(n, fmt.Sprint(i), []byte{byte(i)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := h.artifacts().ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range resp.Artifacts {
		got = append(got, artifact.Key(a))
	}
	if strings.Join(got, " ") != "a@2 b@1 a@0" {
		t.Errorf("list = %v, want newest first", got)
	}
	resp, err = h.artifacts().ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{Name: "b"})
	if err != nil || len(resp.Artifacts) != 1 {
		t.Errorf("list --name b = %v, %v", resp, err)
	}
}

func TestDownloadCap(t *testing.T) {
	h := newHarness(t, harnessOpts{maxDownloads: 1})
	// Big enough that the first download cannot complete into the
	// transport's buffers while its reader is stopped.
	data := randomBytes(17, 32*artifact.ChunkSize)
	if _, err := h.push("big", "1", data, ""); err != nil {
		t.Fatal(err)
	}
	agent := ferryv1.NewAgentServiceClient(h.agent)
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	a, err := agent.DownloadArtifact(ctxA, &ferryv1.DownloadArtifactRequest{Digest: sha(data)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Recv(); err != nil { // A holds the only slot and stalls
		t.Fatal(err)
	}
	if h.dl.Active() != 1 {
		t.Fatalf("active downloads = %d, want 1", h.dl.Active())
	}

	// A caller beyond the cap waits, and gives up when its context ends.
	ctxB, cancelB := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelB()
	b, err := agent.DownloadArtifact(ctxB, &ferryv1.DownloadArtifactRequest{Digest: sha(data)})
	if err == nil {
		_, err = b.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("download beyond the cap: %v, want DeadlineExceeded after waiting", err)
	}
	// Admin calls are not held up by the cap.
	callCtx, cancelCall := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelCall()
	if _, err := h.artifacts().ListArtifacts(callCtx, &ferryv1.ListArtifactsRequest{}); err != nil {
		t.Fatalf("admin call while downloads queue: %v", err)
	}

	// C waits until A ends, then gets everything.
	got := make(chan []byte, 1)
	go func() {
		out, err := h.download(context.Background(), sha(data), 0)
		if err != nil {
			t.Errorf("queued download: %v", err)
		}
		got <- out
	}()
	select {
	case <-got:
		t.Fatal("a download beyond the cap completed while the slot was held")
	case <-time.After(200 * time.Millisecond):
	}
	cancelA()
	if out := <-got; !bytes.Equal(out, data) {
		t.Fatalf("queued download returned %d bytes, not the artifact", len(out))
	}
	waitFor(t, "slots to be released", func() bool { return h.dl.Active() == 0 })
}
