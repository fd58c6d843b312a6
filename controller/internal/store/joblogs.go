package store

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
)

// bucketJobLogs holds the output stored before it was kept as records:
// raw text per rollout and node (read as records by JobLogs).
var bucketJobLogs = []byte("joblogs")

// bucketJobLines holds job output as records: one nested bucket per job
// (jobLinesKey) with its JobLogMeta under metaKey and its LogRecords under
// recordKey(seq).
var bucketJobLines = []byte("joblines")

var metaKey = []byte("m")

// DefaultMaxJobLog bounds the output kept per job.
const DefaultMaxJobLog = 256 << 10

func jobLinesPrefix(rolloutID, nodeID string) []byte {
	return []byte(rolloutID + "\x00" + nodeID + "\x00")
}

func jobLinesKey(rolloutID, nodeID, jobID string) []byte {
	return append(jobLinesPrefix(rolloutID, nodeID), jobID...)
}

func recordKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{'r'}, seq)
}

// AppendJobLog stores lines of a job's output, in order, dropping those
// whose sequence number it already has (an agent sends again what it is
// not sure arrived). A line without a sequence number (from an older
// agent) is numbered after the last. The job keeps its head, a quarter of
// maxJobBytes (DefaultMaxJobLog when 0), and its newest lines; what falls
// between is cut and counted. It returns the highest sequence number the
// job has.
//
// The lines are written in transactions of at most jobLogTxLines lines and
// jobLogTxBytes of text, so that one stays within etcd's limits on the
// operations and bytes of a transaction.
func (s *Store) AppendJobLog(rolloutID, nodeID, jobID string, recs []*ferryv1.LogRecord, now time.Time, maxJobBytes int) (uint64, error) {
	if maxJobBytes <= 0 {
		maxJobBytes = DefaultMaxJobLog
	}
	var last uint64
	for len(recs) > 0 {
		n, size := 0, 0
		for n < len(recs) && n < jobLogTxLines && (n == 0 || size+len(recs[n].GetText()) <= jobLogTxBytes) {
			size += len(recs[n].GetText())
			n++
		}
		var err error
		if last, err = s.appendJobLog(rolloutID, nodeID, jobID, recs[:n], now, maxJobBytes); err != nil {
			return last, err
		}
		recs = recs[n:]
	}
	if last == 0 { // nothing to write: say what the job has
		return s.appendJobLog(rolloutID, nodeID, jobID, nil, now, maxJobBytes)
	}
	return last, nil
}

// jobLogTxLines and jobLogTxBytes bound one AppendJobLog transaction:
// etcd allows 128 operations (one per line) and 1.5 MiB per request by
// default.
const (
	jobLogTxLines = 64
	jobLogTxBytes = 512 << 10
)

func (s *Store) appendJobLog(rolloutID, nodeID, jobID string, recs []*ferryv1.LogRecord, now time.Time, maxJobBytes int) (uint64, error) {
	if maxJobBytes <= 0 {
		maxJobBytes = DefaultMaxJobLog
	}
	headMax, tailMax := uint64(maxJobBytes/4), uint64(maxJobBytes-maxJobBytes/4)
	var last uint64
	err := s.kv.Batch(func(tx kvTx) error {
		jb, err := tx.Bucket(bucketJobLines).CreateBucketIfNotExists(jobLinesKey(rolloutID, nodeID, jobID))
		if err != nil {
			return err
		}
		meta := &ferryv1.JobLogMeta{RolloutId: rolloutID, NodeId: nodeID, JobId: jobID, FirstAt: timestamp(now)}
		if data := jb.Get(metaKey); data != nil {
			if meta, err = decode[ferryv1.JobLogMeta]("job log", metaKey, data); err != nil {
				return err
			}
		}
		for _, r := range recs {
			seq := r.GetSeq()
			if seq == 0 {
				seq = meta.GetLastSeq() + 1
			}
			if seq <= meta.GetLastSeq() {
				continue // sent again
			}
			r = &ferryv1.LogRecord{Seq: seq, At: r.GetAt(), Step: r.GetStep(), Stream: r.GetStream(), Text: r.GetText()}
			data, err := proto.Marshal(r)
			if err != nil {
				return err
			}
			n := uint64(len(data))
			meta.LastSeq = seq
			if meta.GetTailBytes() == 0 && meta.GetCutLines() == 0 && meta.GetHeadBytes()+n <= headMax {
				meta.HeadEnd, meta.HeadBytes = seq, meta.GetHeadBytes()+n
			} else {
				meta.TailBytes += n
			}
			if err := jb.Put(recordKey(seq), data); err != nil {
				return err
			}
		}
		// Cut the oldest tail lines past the bound, once per batch and only
		// when over it (the tail only grows above, so this cuts what cutting
		// after each line would).
		if meta.GetTailBytes() > tailMax {
			from := recordKey(meta.GetHeadEnd() + 1)
			var to []byte
			err := jb.Scan(from, func(k, v []byte) (bool, error) {
				if k[0] != 'r' || meta.GetTailBytes() <= tailMax {
					return false, nil
				}
				meta.TailBytes -= uint64(len(v))
				meta.CutLines++
				meta.CutBytes += uint64(len(v))
				to = append(slices.Clone(k), 0) // just past k
				return true, nil
			})
			if err != nil {
				return err
			}
			// One range: the cut lines are the oldest of the tail, in a row.
			if to != nil {
				if err := jb.DeleteRange(from, to); err != nil {
					return err
				}
			}
		}
		meta.UpdatedAt = timestamp(now)
		last = meta.GetLastSeq()
		return put(jb, "job log", string(metaKey), meta)
	})
	return last, err
}

// JobLogs returns the stored output of a node's jobs in a rollout, the
// jobs in the order their output began, each record with its node and job
// set; a marker record (cut_lines set, stream ferry) stands where lines
// were cut or never arrived.
func (s *Store) JobLogs(rolloutID, nodeID string) ([]*ferryv1.LogRecord, error) {
	var out []*ferryv1.LogRecord
	err := s.kv.View(func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		if legacy := tx.Bucket(bucketJobLogs).Get([]byte(rolloutID + "/" + nodeID)); len(legacy) > 0 {
			for k, line := range strings.Split(strings.TrimSuffix(string(legacy), "\n"), "\n") {
				out = append(out, &ferryv1.LogRecord{Seq: uint64(k) + 1, Text: line, NodeId: nodeID})
			}
		}
		type jobRecs struct {
			first time.Time
			recs  []*ferryv1.LogRecord
		}
		var jobs []jobRecs
		lines := tx.Bucket(bucketJobLines)
		err := lines.Buckets(jobLinesPrefix(rolloutID, nodeID), func(k []byte) error {
			jb := lines.Bucket(k)
			if jb == nil {
				return nil
			}
			meta, err := decode[ferryv1.JobLogMeta]("job log", k, jb.Get(metaKey))
			if err != nil {
				return err
			}
			recs, err := readJob(jb, meta)
			if err != nil {
				return err
			}
			jobs = append(jobs, jobRecs{fromTimestamp(meta.GetFirstAt()), recs})
			return nil
		})
		if err != nil {
			return err
		}
		slices.SortStableFunc(jobs, func(a, b jobRecs) int { return a.first.Compare(b.first) })
		for _, j := range jobs {
			out = append(out, j.recs...)
		}
		return nil
	})
	return out, err
}

// readJob reads one job's records, with markers in the gaps.
func readJob(jb kvBucket, meta *ferryv1.JobLogMeta) ([]*ferryv1.LogRecord, error) {
	var out []*ferryv1.LogRecord
	var prev uint64
	gap := func(next uint64) {
		if next <= prev+1 {
			return
		}
		m := &ferryv1.LogRecord{Seq: prev + 1, NodeId: meta.GetNodeId(), JobId: meta.GetJobId(), Stream: ferryv1.LogStream_LOG_STREAM_FERRY, CutLines: next - prev - 1}
		if prev == meta.GetHeadEnd() && meta.GetCutLines() > 0 {
			m.CutBytes = meta.GetCutBytes()
			m.Text = fmt.Sprintf("[... %d lines (%s) cut here: the controller keeps the first and the last lines of each job's output ...]", m.CutLines, bytesize.IEC(m.CutBytes))
		} else {
			m.Text = fmt.Sprintf("[... %d lines missing here: the node dropped them (its log buffer was full) or sent them faster than the controller accepts ...]", m.CutLines)
		}
		out = append(out, m)
	}
	err := jb.Scan([]byte{'r'}, func(k, v []byte) (bool, error) {
		if k[0] != 'r' {
			return false, nil
		}
		r, err := decode[ferryv1.LogRecord]("job log line", k, v)
		if err != nil {
			return false, err
		}
		gap(r.GetSeq())
		r.NodeId, r.JobId = meta.GetNodeId(), meta.GetJobId()
		out = append(out, r)
		prev = r.GetSeq()
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	gap(meta.GetLastSeq() + 1)
	return out, nil
}

// ExpireJobLogs deletes the output of jobs last written before now-maxAge
// (none when maxAge is 0), then that of the oldest jobs until what is left
// takes at most maxTotal bytes (no bound when 0). It returns how many
// jobs' output it deleted. It deletes at most expireTxJobs jobs per
// transaction (etcd's limit on a transaction's operations).
func (s *Store) ExpireJobLogs(now time.Time, maxAge time.Duration, maxTotal uint64) (int, error) {
	total := 0
	for {
		n, err := s.expireJobLogs(now, maxAge, maxTotal)
		total += n
		if err != nil || n < expireTxJobs {
			return total, err
		}
	}
}

const expireTxJobs = 48

func (s *Store) expireJobLogs(now time.Time, maxAge time.Duration, maxTotal uint64) (int, error) {
	deleted := 0
	err := s.kv.Update(func(tx kvTx) error {
		deleted = 0 // a run again (etcd) starts over
		lines := tx.Bucket(bucketJobLines)
		type jobSize struct {
			key     []byte
			updated time.Time
			size    uint64
		}
		var jobs []jobSize
		var total uint64
		err := lines.Buckets(nil, func(k []byte) error {
			meta, err := decode[ferryv1.JobLogMeta]("job log", k, lines.Bucket(k).Get(metaKey))
			if err != nil {
				return err
			}
			j := jobSize{slices.Clone(k), fromTimestamp(meta.GetUpdatedAt()), meta.GetHeadBytes() + meta.GetTailBytes()}
			jobs = append(jobs, j)
			total += j.size
			return nil
		})
		if err != nil {
			return err
		}
		slices.SortFunc(jobs, func(a, b jobSize) int { return a.updated.Compare(b.updated) })
		for _, j := range jobs {
			if deleted == expireTxJobs {
				break
			}
			old := maxAge > 0 && now.Sub(j.updated) > maxAge
			if !old && (maxTotal == 0 || total <= maxTotal) {
				break
			}
			if err := lines.DeleteBucket(j.key); err != nil {
				return err
			}
			total -= j.size
			deleted++
		}
		return nil
	})
	return deleted, err
}
