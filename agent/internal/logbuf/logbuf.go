// Package logbuf keeps each job's output lines on disk, in the agent's
// state dir, until the controller acknowledges that it has stored them.
// While the link to the controller is down the lines wait here; after a
// reconnect every unacknowledged line is sent again, and the controller
// drops those it already has by their sequence number. The buffer is
// bounded per job and in all: past the per-job bound the oldest lines
// after the job's head are dropped (the gap in the sequence numbers is
// shown as a marker when the log is read), past the total bound the
// oldest job's lines are.
package logbuf

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// Defaults for Config.
const (
	DefaultMaxJobBytes   = 1 << 20
	DefaultMaxTotalBytes = 8 << 20
	// MaxAge is how long a job's buffer is kept at most, acknowledged or
	// not (a job the controller never sends again, a controller that never
	// acknowledges).
	MaxAge = 7 * 24 * time.Hour
	// MaxText and MaxStep bound one record's text and step name; longer
	// ones are cut.
	MaxText = 4096
	MaxStep = 200
)

// Config says where the buffer lives and how large it may grow.
type Config struct {
	Dir           string
	MaxJobBytes   int // unacknowledged output kept per job (default 1 MiB)
	MaxTotalBytes int // in all (default 8 MiB)
	Now           func() time.Time
	Logger        *slog.Logger
}

// Buffer is the agent's job output buffer. It is safe for concurrent use.
type Buffer struct {
	cfg    Config
	notify chan struct{}

	mu   sync.Mutex
	jobs map[string]*job
	size int // bytes of unacknowledged records, all jobs
}

type job struct {
	id, rollout, key string
	created          time.Time
	next             uint64 // the next record's sequence number
	acked            uint64
	sent             uint64 // highest sent on the current stream
	done             bool
	// head holds the job's first lines (up to a quarter of MaxJobBytes),
	// never dropped for the bound; tail the rest, dropped oldest first.
	head, tail []*ferryv1.LogRecord
	headEnd    uint64 // highest sequence number that belongs to the head
	headBytes  int    // bytes the head ever had
	bytes      int    // bytes in head and tail
	f          *os.File
	fileBytes  int
}

// New opens the buffer in cfg.Dir, loading what an earlier run left.
func New(cfg Config) (*Buffer, error) {
	if cfg.MaxJobBytes <= 0 {
		cfg.MaxJobBytes = DefaultMaxJobBytes
	}
	if cfg.MaxTotalBytes <= 0 {
		cfg.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if cfg.MaxTotalBytes < cfg.MaxJobBytes {
		cfg.MaxTotalBytes = cfg.MaxJobBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("job log buffer: %w", err)
	}
	b := &Buffer{cfg: cfg, notify: make(chan struct{}, 1), jobs: map[string]*job{}}
	if err := b.load(); err != nil {
		return nil, fmt.Errorf("job log buffer %s: %w", cfg.Dir, err)
	}
	return b, nil
}

// Notify receives a value when there is output to send.
func (b *Buffer) Notify() <-chan struct{} { return b.notify }

func (b *Buffer) wake() {
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

func jobKey(jobID string) string {
	h := sha256.Sum256([]byte(jobID))
	return hex.EncodeToString(h[:8])
}

func (b *Buffer) path(key, ext string) string { return filepath.Join(b.cfg.Dir, key+ext) }

// Append records one line of a job's output and wakes the sender.
func (b *Buffer) Append(jobID, rolloutID, step string, stream ferryv1.LogStream, text string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	j := b.jobs[jobID]
	if j == nil {
		j = &job{id: jobID, rollout: rolloutID, key: jobKey(jobID), created: b.cfg.Now(), next: 1}
		b.jobs[jobID] = j
	}
	r := &ferryv1.LogRecord{Seq: j.next, At: timestamppb.New(b.cfg.Now()), Step: cut(oneLine(step), MaxStep), Stream: stream, Text: cut(text, MaxText)}
	j.next++
	b.add(j, r)
	b.write(j, r)
	b.bound(j)
	b.wake()
}

// cut shortens s to at most n bytes and makes it valid UTF-8 (protobuf
// strings must be): a command may print anything.
func cut(s string, n int) string {
	if len(s) > n {
		s = s[:n] // a rune cut in two becomes invalid and is dropped below
		return strings.ToValidUTF8(s, "")
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// oneLine is a step name as records carry it: its first line (a check's
// script may have many), marked when there were more.
func oneLine(s string) string {
	if first, rest, ok := strings.Cut(strings.TrimRight(s, "\n"), "\n"); ok && rest != "" {
		return strings.TrimSpace(first) + " …"
	}
	return strings.TrimRight(s, "\n")
}

// add puts a record in memory (not on disk).
func (b *Buffer) add(j *job, r *ferryv1.LogRecord) {
	n := proto.Size(r)
	if r.GetSeq() == j.headEnd+1 && j.headBytes+n <= b.cfg.MaxJobBytes/4 {
		j.headEnd = r.GetSeq()
		j.headBytes += n
		j.head = append(j.head, r)
	} else {
		j.tail = append(j.tail, r)
	}
	j.bytes += n
	b.size += n
}

// bound drops the oldest tail lines of j past MaxJobBytes, then whole
// jobs, oldest first, past MaxTotalBytes.
func (b *Buffer) bound(j *job) {
	for j.bytes > b.cfg.MaxJobBytes && len(j.tail) > 0 {
		n := proto.Size(j.tail[0])
		j.tail[0] = nil
		j.tail = j.tail[1:]
		j.bytes -= n
		b.size -= n
	}
	for b.size > b.cfg.MaxTotalBytes {
		var oldest *job
		for _, o := range b.jobs {
			if o != j && (oldest == nil || o.created.Before(oldest.created)) {
				oldest = o
			}
		}
		if oldest == nil {
			return
		}
		b.cfg.Logger.Warn("job log buffer is full: dropping the unsent output of the oldest job", "job", oldest.id, "bytes", oldest.bytes)
		b.drop(oldest)
	}
	if j.fileBytes > 2*b.cfg.MaxJobBytes {
		b.compact(j)
	}
}

// drop forgets a job and removes its files.
func (b *Buffer) drop(j *job) {
	b.size -= j.bytes
	if j.f != nil {
		_ = j.f.Close()
	}
	for _, ext := range []string{".log", ".ack"} {
		if err := os.Remove(b.path(j.key, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.cfg.Logger.Warn("remove job log buffer file", "err", err)
		}
	}
	delete(b.jobs, j.id)
}

// Next returns the oldest job's output not yet sent on this stream, at
// most maxRecords lines and about maxBytes, and counts it as sent; nil
// when everything was sent.
func (b *Buffer) Next(maxRecords, maxBytes int) *ferryv1.JobLog {
	b.mu.Lock()
	defer b.mu.Unlock()
	var first *job
	for _, j := range b.jobs {
		if j.pending() && (first == nil || j.created.Before(first.created)) {
			first = j
		}
	}
	if first == nil {
		return nil
	}
	msg := &ferryv1.JobLog{JobId: first.id, RolloutId: first.rollout}
	size := 0
	for _, r := range slices.Concat(first.head, first.tail) {
		if r.GetSeq() <= first.sent {
			continue
		}
		if len(msg.Records) >= maxRecords || len(msg.Records) > 0 && size+proto.Size(r) > maxBytes {
			break
		}
		msg.Records = append(msg.Records, r)
		size += proto.Size(r)
	}
	first.sent = msg.Records[len(msg.Records)-1].GetSeq()
	return msg
}

func (j *job) pending() bool {
	last := j.head
	if len(j.tail) > 0 {
		last = j.tail
	}
	return len(last) > 0 && last[len(last)-1].GetSeq() > j.sent
}

// Resend counts everything unacknowledged as unsent: a new stream gets it
// all again. It does not wake the sender.
func (b *Buffer) Resend() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, j := range b.jobs {
		j.sent = j.acked
	}
}

// Ack drops a job's lines up to seq, which the controller has stored.
func (b *Buffer) Ack(jobID string, seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	j := b.jobs[jobID]
	if j == nil || seq <= j.acked {
		return
	}
	j.acked = seq
	j.sent = max(j.sent, seq)
	j.head = b.trimAcked(j, j.head)
	j.tail = b.trimAcked(j, j.tail)
	b.settle(j)
}

func (b *Buffer) trimAcked(j *job, rs []*ferryv1.LogRecord) []*ferryv1.LogRecord {
	k := 0
	for k < len(rs) && rs[k].GetSeq() <= j.acked {
		n := proto.Size(rs[k])
		j.bytes -= n
		b.size -= n
		rs[k] = nil
		k++
	}
	return rs[k:]
}

// Finish marks a job over: once the controller has all of its output, its
// buffer is removed.
func (b *Buffer) Finish(jobID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if j := b.jobs[jobID]; j != nil {
		j.done = true
		b.settle(j)
	}
}

// settle removes a finished, fully acknowledged job, or records how far
// the controller has acknowledged it.
func (b *Buffer) settle(j *job) {
	if j.done && len(j.head) == 0 && len(j.tail) == 0 {
		b.drop(j)
		return
	}
	data := fmt.Appendf(nil, "%d %d %t\n", j.acked, j.next, j.done)
	// Not synced: losing it only means the controller gets lines again
	// that it drops as duplicates.
	if err := os.WriteFile(b.path(j.key, ".ack.tmp"), data, 0o600); err == nil {
		err = os.Rename(b.path(j.key, ".ack.tmp"), b.path(j.key, ".ack"))
		if err != nil {
			b.cfg.Logger.Warn("job log buffer: record acknowledgement", "err", err)
		}
	}
}

// Unacked reports whether any job has lines sent but not acknowledged.
func (b *Buffer) Unacked() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, j := range b.jobs {
		if (len(j.head) > 0 || len(j.tail) > 0) && j.sent > j.acked {
			return true
		}
	}
	return false
}

// Len returns the unacknowledged lines of a job (for tests and metrics).
func (b *Buffer) Len(jobID string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if j := b.jobs[jobID]; j != nil {
		return len(j.head) + len(j.tail)
	}
	return 0
}

// write appends a record to the job's file, creating it with its header
// first. Failing to write keeps the line in memory only.
func (b *Buffer) write(j *job, r *ferryv1.LogRecord) {
	if j.f == nil {
		f, err := os.OpenFile(b.path(j.key, ".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			b.cfg.Logger.Warn("job log buffer: open file; keeping output in memory only", "err", err)
			return
		}
		j.f = f
		if st, err := f.Stat(); err == nil {
			j.fileBytes = int(st.Size())
		}
		if j.fileBytes == 0 {
			b.frame(j, &ferryv1.JobLog{JobId: j.id, RolloutId: j.rollout})
		}
	}
	b.frame(j, r)
}

// appendFrame appends m to buf as the files hold it: its length as a
// uvarint, then its bytes.
func appendFrame(buf []byte, m proto.Message) ([]byte, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return buf, err
	}
	return append(binary.AppendUvarint(buf, uint64(len(data))), data...), nil
}

func (b *Buffer) frame(j *job, m proto.Message) {
	buf, err := appendFrame(nil, m)
	if err != nil {
		return
	}
	n, err := j.f.Write(buf)
	j.fileBytes += n
	if err != nil {
		b.cfg.Logger.Warn("job log buffer: write", "err", err)
	}
}

// compact rewrites a job's file with only what is kept in memory.
func (b *Buffer) compact(j *job) {
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
	err := atomicfile.Write(b.path(j.key, ".log"), 0o600, func(w io.Writer) error {
		for _, m := range append([]proto.Message{&ferryv1.JobLog{JobId: j.id, RolloutId: j.rollout}}, recs(j)...) {
			buf, err := appendFrame(nil, m)
			if err != nil {
				return err
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		return nil
	}, nil)
	if err != nil {
		b.cfg.Logger.Warn("job log buffer: compact", "err", err)
	}
	j.fileBytes = 0
}

func recs(j *job) []proto.Message {
	var ms []proto.Message
	for _, r := range slices.Concat(j.head, j.tail) {
		ms = append(ms, r)
	}
	return ms
}

// load reads the jobs an earlier run left, dropping those past MaxAge.
func (b *Buffer) load() error {
	ents, err := os.ReadDir(b.cfg.Dir)
	if err != nil {
		return err
	}
	now := b.cfg.Now()
	for _, e := range ents {
		key, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		j, err := b.loadJob(key, info.ModTime())
		if err != nil || now.Sub(info.ModTime()) > MaxAge {
			if err != nil {
				b.cfg.Logger.Warn("job log buffer: unreadable file dropped", "file", e.Name(), "err", err)
			}
			_ = os.Remove(b.path(key, ".log"))
			_ = os.Remove(b.path(key, ".ack"))
			continue
		}
		b.jobs[j.id] = j
		b.bound(j)
		if j.done && j.bytes == 0 {
			b.drop(j)
		}
	}
	if len(b.jobs) > 0 {
		b.wake()
	}
	return nil
}

func (b *Buffer) loadJob(key string, mtime time.Time) (*job, error) {
	f, err := os.Open(b.path(key, ".log"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	r := bufio.NewReader(f)
	var hdr ferryv1.JobLog
	if err := readFrame(r, &hdr); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if hdr.GetJobId() == "" || jobKey(hdr.GetJobId()) != key {
		return nil, errors.New("header names another job")
	}
	j := &job{id: hdr.GetJobId(), rollout: hdr.GetRolloutId(), key: key, created: mtime, next: 1}
	if data, err := os.ReadFile(b.path(key, ".ack")); err == nil {
		_, _ = fmt.Sscanf(string(data), "%d %d %t", &j.acked, &j.next, &j.done)
		j.next = max(j.next, j.acked+1)
		j.sent = j.acked
	}
	for {
		rec := &ferryv1.LogRecord{}
		if err := readFrame(r, rec); err != nil {
			break // the end, or a frame cut by a crash
		}
		j.next = max(j.next, rec.GetSeq()+1)
		if rec.GetSeq() > j.acked && rec.GetSeq() > lastSeq(j) {
			b.add(j, rec)
		}
	}
	return j, nil
}

func lastSeq(j *job) uint64 {
	if len(j.tail) > 0 {
		return j.tail[len(j.tail)-1].GetSeq()
	}
	if len(j.head) > 0 {
		return j.head[len(j.head)-1].GetSeq()
	}
	return 0
}

func readFrame(r *bufio.Reader, m proto.Message) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	if n > 1<<20 {
		return errors.New("frame too large")
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return err
	}
	return proto.Unmarshal(data, m)
}

// Close closes the open files.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, j := range b.jobs {
		if j.f != nil {
			_ = j.f.Close()
			j.f = nil
		}
	}
	return nil
}
