package store

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func lines(from, to uint64, text string) []*ferryv1.LogRecord {
	var rs []*ferryv1.LogRecord
	for seq := from; seq <= to; seq++ {
		rs = append(rs, &ferryv1.LogRecord{Seq: seq, At: timestamppb.Now(), Step: "check: go version", Stream: ferryv1.LogStream_LOG_STREAM_STDOUT, Text: fmt.Sprintf("%s %d", text, seq)})
	}
	return rs
}

func texts(rs []*ferryv1.LogRecord) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetText())
	}
	return out
}

func TestJobLogKeepsHeadAndTailWithAMarker(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		s := openBackend(t, backend)
		const bound = 64 << 10
		pad := strings.Repeat("x", 1000)
		now := time.Now()
		for seq := uint64(1); seq <= 300; seq += 10 { // ~300 KB in batches of 10
			if _, err := s.AppendJobLog("ro-1", "n1", "ro-1/job/n1", lines(seq, seq+9, pad), now, bound); err != nil {
				t.Fatal(err)
			}
		}
		recs, err := s.JobLogs("ro-1", "n1")
		if err != nil {
			t.Fatal(err)
		}
		var size int
		var marker *ferryv1.LogRecord
		for _, r := range recs {
			size += len(r.GetText())
			if r.GetCutLines() > 0 {
				if marker != nil {
					t.Errorf("a second marker: %q", r.GetText())
				}
				marker = r
			}
			if r.GetNodeId() != "n1" || r.GetJobId() != "ro-1/job/n1" {
				t.Errorf("record %d names node %q job %q", r.GetSeq(), r.GetNodeId(), r.GetJobId())
			}
		}
		if size > bound {
			t.Errorf("kept %d bytes of output, over the bound of %d", size, bound)
		}
		first, last := recs[0], recs[len(recs)-1]
		if first.GetText() != pad+" 1" || last.GetText() != pad+" 300" {
			t.Errorf("first line %q…, last line …%q: want line 1 and line 300", first.GetText()[len(pad):], last.GetText()[len(pad):])
		}
		if marker == nil {
			t.Fatalf("no marker for the cut lines in %d records", len(recs))
		}
		kept := uint64(len(recs) - 1)
		if marker.GetCutLines()+kept != 300 || marker.GetCutBytes() < marker.GetCutLines()*1000 || marker.GetStream() != ferryv1.LogStream_LOG_STREAM_FERRY {
			t.Errorf("marker says %d lines (%d bytes) cut, %d kept; want 300 in all: %q", marker.GetCutLines(), marker.GetCutBytes(), kept, marker.GetText())
		}
		if !strings.Contains(marker.GetText(), fmt.Sprintf("%d lines", marker.GetCutLines())) {
			t.Errorf("marker text %q does not say how many lines were cut", marker.GetText())
		}
	})
}

func TestJobLogDropsResentLinesAndKeepsJobsInOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		s := openBackend(t, backend)
		now := time.Now()
		for _, c := range []struct {
			job      string
			from, to uint64
			at       time.Time
			want     uint64
		}{
			{"ro-1/job/n1", 1, 3, now, 3},
			{"ro-1/job/n1", 2, 5, now, 5}, // a reconnect sends 2 and 3 again
			{"ro-1/job/n1", 1, 5, now, 5},
			{"ro-1/rollback/n1", 1, 2, now.Add(time.Second), 2},
		} {
			got, err := s.AppendJobLog("ro-1", "n1", c.job, lines(c.from, c.to, c.job), c.at, 0)
			if err != nil || got != c.want {
				t.Fatalf("append %s %d..%d = %d, %v; want %d", c.job, c.from, c.to, got, err, c.want)
			}
		}
		recs, err := s.JobLogs("ro-1", "n1")
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"ro-1/job/n1 1", "ro-1/job/n1 2", "ro-1/job/n1 3", "ro-1/job/n1 4", "ro-1/job/n1 5", "ro-1/rollback/n1 1", "ro-1/rollback/n1 2"}
		if got := texts(recs); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("stored lines:\n got %q\nwant %q", got, want)
		}
		// A gap the node left (its buffer overflowed) shows as a marker.
		if _, err := s.AppendJobLog("ro-1", "n2", "ro-1/job/n2", append(lines(1, 1, "a"), lines(5, 5, "b")...), now, 0); err != nil {
			t.Fatal(err)
		}
		recs, _ = s.JobLogs("ro-1", "n2")
		if len(recs) != 3 || recs[1].GetCutLines() != 3 || !strings.Contains(recs[1].GetText(), "3 lines missing") {
			t.Errorf("lines 1 and 5: %q", texts(recs))
		}
	})
}

func TestJobLogExpiresByAgeAndTotalSize(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		s := openBackend(t, backend)
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for k, node := range []string{"old", "mid", "new"} {
			if _, err := s.AppendJobLog("ro-1", node, "ro-1/job/"+node, lines(1, 10, strings.Repeat("y", 100)), t0.Add(time.Duration(k)*24*time.Hour), 0); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.ExpireJobLogs(t0.Add(50*time.Hour), 36*time.Hour, 0) // "old" is 50 h old
		if err != nil || n != 1 {
			t.Fatalf("expire by age removed %d, %v; want 1", n, err)
		}
		if recs, _ := s.JobLogs("ro-1", "old"); len(recs) != 0 {
			t.Errorf("expired job still has %d lines", len(recs))
		}
		if recs, _ := s.JobLogs("ro-1", "mid"); len(recs) != 10 {
			t.Errorf("job within the age has %d lines, want 10", len(recs))
		}
		// Each job takes a bit over 1000 bytes: a bound of 1500 keeps the newest.
		if n, err := s.ExpireJobLogs(t0.Add(50*time.Hour), 0, 1500); err != nil || n != 1 {
			t.Fatalf("expire by size removed %d, %v; want 1", n, err)
		}
		if recs, _ := s.JobLogs("ro-1", "mid"); len(recs) != 0 {
			t.Errorf("the oldest job is kept past the total bound")
		}
		if recs, _ := s.JobLogs("ro-1", "new"); len(recs) != 10 {
			t.Errorf("the newest job lost its lines: %d", len(recs))
		}
	})
}
