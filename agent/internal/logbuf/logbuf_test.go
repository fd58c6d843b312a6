package logbuf

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

const stdout = ferryv1.LogStream_LOG_STREAM_STDOUT

func seqs(m *ferryv1.JobLog) []uint64 {
	var out []uint64
	for _, r := range m.GetRecords() {
		out = append(out, r.GetSeq())
	}
	return out
}

func TestBufferKeepsLinesUntilAcknowledgedAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	b, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 5; k++ {
		b.Append("ro-1/job/n1", "ro-1", "check: true", stdout, fmt.Sprintf("line %d", k))
	}
	m := b.Next(3, 1<<20)
	if m.GetJobId() != "ro-1/job/n1" || m.GetRolloutId() != "ro-1" || fmt.Sprint(seqs(m)) != "[1 2 3]" {
		t.Fatalf("first batch: %s %v", m.GetJobId(), seqs(m))
	}
	if m.GetRecords()[0].GetStep() != "check: true" || m.GetRecords()[0].GetText() != "line 1" || m.GetRecords()[0].GetAt() == nil {
		t.Errorf("record: %v", m.GetRecords()[0])
	}
	if m := b.Next(3, 1<<20); fmt.Sprint(seqs(m)) != "[4 5]" {
		t.Fatalf("second batch: %v", seqs(m))
	}
	if m := b.Next(3, 1<<20); m != nil {
		t.Fatalf("everything was sent, got %v", seqs(m))
	}
	b.Ack("ro-1/job/n1", 2)
	// The stream broke: a new one gets everything not acknowledged.
	b.Resend()
	if m := b.Next(10, 1<<20); fmt.Sprint(seqs(m)) != "[3 4 5]" {
		t.Fatalf("after a reconnect: %v", seqs(m))
	}
	_ = b.Close()

	// The agent restarts: the lines not acknowledged are still there, and
	// the job's next line continues the numbering.
	b, err = New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b.Append("ro-1/job/n1", "ro-1", "", stdout, "after the restart")
	if m := b.Next(10, 1<<20); fmt.Sprint(seqs(m)) != "[3 4 5 6]" || m.GetRecords()[3].GetText() != "after the restart" {
		t.Fatalf("after a restart: %v", seqs(m))
	}
	b.Finish("ro-1/job/n1")
	b.Ack("ro-1/job/n1", 6)
	if n := b.Len("ro-1/job/n1"); n != 0 {
		t.Errorf("%d lines kept after the last was acknowledged", n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a finished, acknowledged job leaves files: %v", ents)
	}
}

func TestBufferIsBoundedKeepingHeadAndNewest(t *testing.T) {
	b, err := New(Config{Dir: t.TempDir(), MaxJobBytes: 40 << 10, MaxTotalBytes: 60 << 10})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 1000)
	for k := 1; k <= 200; k++ {
		b.Append("j1", "ro-1", "", stdout, fmt.Sprintf("%d %s", k, pad))
	}
	m := b.Next(1000, 1<<30)
	got := seqs(m)
	if got[0] != 1 || got[len(got)-1] != 200 || len(got) > 41 {
		t.Fatalf("kept %d lines, from %d to %d: want line 1, line 200 and about 40 KB", len(got), got[0], got[len(got)-1])
	}
	gap := false
	for k := 1; k < len(got); k++ {
		gap = gap || got[k] != got[k-1]+1
	}
	if !gap {
		t.Errorf("no gap in the sequence numbers though lines were dropped: %v", got)
	}
	// Past the total bound the oldest job goes.
	for k := 1; k <= 40; k++ {
		b.Append("j2", "ro-2", "", stdout, pad)
	}
	if b.Len("j1") != 0 || b.Len("j2") == 0 {
		t.Errorf("over the total bound: j1 has %d lines, j2 %d; want the older job dropped", b.Len("j1"), b.Len("j2"))
	}
}

func TestStepNamesAreOneLine(t *testing.T) {
	b, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b.Append("j", "r", "check: echo a\nexit 7\n", stdout, "a")
	b.Append("j", "r", "check: true\n", stdout, "b")
	m := b.Next(10, 1<<20)
	if got := m.GetRecords()[0].GetStep(); got != "check: echo a …" {
		t.Errorf("step of a two-line check: %q", got)
	}
	if got := m.GetRecords()[1].GetStep(); got != "check: true" {
		t.Errorf("step of a one-line check: %q", got)
	}
}

func TestCutKeepsValidUTF8(t *testing.T) {
	long := strings.Repeat("é", MaxText) // 2 bytes each
	for _, s := range []string{long, "bad \xff byte", "ok"} {
		got := cut(s, MaxText)
		if len(got) > MaxText || !utf8.ValidString(got) {
			t.Errorf("cut(%.20q) = %d bytes, valid %v", s, len(got), utf8.ValidString(got))
		}
	}
}
