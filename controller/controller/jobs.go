package controller

import (
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/metrics"
	"github.com/ferrydeploy/ferry/controller/internal/mirror"
	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
	"github.com/ferrydeploy/ferry/shared/enumword"
	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

// dispatcher sends the engine's jobs on the agents' streams.
type dispatcher struct {
	fleet     *fleet.Registry
	store     *store.Store
	artifacts *artifact.Store
	log       *slog.Logger
	// leading, when set, refuses sends while this controller does not
	// lead: no job goes out from a deposed leader's memory.
	leading func() error
}

// Dispatch sends a job, naming the artifact's URL on the mirror of the
// node's group when it has one (package mirror), and its zstd form when
// the artifact has one and the node's agent advertised zstd (an older
// agent gets the original only).
func (d dispatcher) Dispatch(nodeID string, job *ferryv1.Job) error {
	if d.leading != nil {
		if err := d.leading(); err != nil {
			return err
		}
	}
	orig := job
	edit := func() *ferryv1.Job {
		if job == orig {
			job = proto.Clone(job).(*ferryv1.Job) // the engine's copy stays as it saved it
		}
		return job
	}
	if n, ok := d.fleet.Node(nodeID); ok && n.GetGroup() != "" && job.GetPackage().GetArtifact() != nil {
		m, err := d.store.Mirror(n.GetGroup())
		switch {
		case err == nil:
			edit().Mirrors = mirror.Sources(m, job.GetPackage())
		case !errors.Is(err, store.ErrNotFound):
			d.log.Warn("read the group's mirror; the job goes without it", "node", nodeID, "group", n.GetGroup(), "err", err)
		}
	}
	if digest := job.GetPackage().GetArtifact().GetDigest(); digest != "" && d.artifacts != nil && d.fleet.SupportsCodec(nodeID, archive.CodecZstd) {
		if enc, ok := d.artifacts.ZstdForm(digest); ok {
			edit().ArtifactEncoding = enc
		}
	}
	return d.fleet.Dispatch(nodeID, &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: job}})
}

func (d dispatcher) Cancel(nodeID, jobID string) error {
	return d.fleet.Dispatch(nodeID, &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Cancel{Cancel: &ferryv1.JobCancel{JobId: jobID}}})
}

// jobSink routes what agents report to the engine, the log store and the
// metrics.
type jobSink struct {
	engine  *rollout.Engine
	store   *store.Store
	metrics *metrics.Metrics
	log     *slog.Logger
	now     func() time.Time
	logs    LogLimits
	logRate *ratelimit.Limiter // output lines per node
}

func (j jobSink) AgentHello(nodeID string, recent []*ferryv1.JobUpdate) {
	j.engine.NodeConnected(nodeID, recent)
}

func (j jobSink) AgentHeartbeat(nodeID string) { j.engine.NodeHeartbeat(nodeID) }

func (j jobSink) HandleJobUpdate(nodeID string, u *ferryv1.JobUpdate) {
	switch u.GetPhase() {
	case ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, ferryv1.JobPhase_JOB_PHASE_UNCHANGED, ferryv1.JobPhase_JOB_PHASE_FAILED:
		// From dispatch to the final report, as the engine recorded it.
		var d time.Duration
		if n, ok := j.engine.NodeJob(u.GetRolloutId(), nodeID); ok {
			inFlight := n.GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING ||
				n.GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING ||
				n.GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING && n.GetFinishedAt() == nil
			// Only the first final report counts (re-reports are ignored).
			if inFlight && n.GetJobId() == u.GetJobId() && n.GetStartedAt() != nil {
				d = j.now().Sub(n.GetStartedAt().AsTime())
			}
		}
		if d > 0 {
			outcome := enumword.Of(u.GetPhase()) // succeeded, unchanged, failed
			j.metrics.InstallDuration.WithLabelValues(outcome).Observe(d.Seconds())
		}
	}
	j.engine.HandleJobUpdate(nodeID, u)
}

// HandleJobLog stores a job's output lines. Only output of a job the
// engine gave this node is kept (an agent cannot fill the store under
// other rollouts' names); lines past the node's rate wait on the agent,
// which sends what was not acknowledged again.
func (j jobSink) HandleJobLog(nodeID string, l *ferryv1.JobLog) *ferryv1.JobLogAck {
	recs := l.GetRecords()
	if len(recs) == 0 && l.GetText() != "" {
		recs = legacyRecords(l)
	}
	if len(recs) == 0 {
		return nil
	}
	if !j.engine.NodeRanJob(l.GetRolloutId(), nodeID, l.GetJobId()) {
		// Acknowledged all the same, so the agent stops sending it.
		return &ferryv1.JobLogAck{JobId: l.GetJobId(), Seq: recs[len(recs)-1].GetSeq()}
	}
	allowed := 0
	for allowed < len(recs) && j.logRate.Allow(nodeID) {
		allowed++
	}
	if allowed < len(recs) {
		j.log.Debug("job output over the node's rate; the agent sends it again", "node", nodeID, "lines", len(recs)-allowed)
	}
	if allowed == 0 {
		return nil
	}
	last, err := j.store.AppendJobLog(l.GetRolloutId(), nodeID, l.GetJobId(), recs[:allowed], j.now(), j.logs.MaxJobBytes)
	if err != nil {
		j.log.Warn("store job log", "node", nodeID, "rollout", l.GetRolloutId(), "err", err)
		return nil
	}
	if l.GetRecords() == nil {
		return nil // an older agent: it has nothing to acknowledge
	}
	return &ferryv1.JobLogAck{JobId: l.GetJobId(), Seq: last}
}

// legacyRecords splits the text an older agent sends into lines; the
// store numbers them.
func legacyRecords(l *ferryv1.JobLog) []*ferryv1.LogRecord {
	var recs []*ferryv1.LogRecord
	for _, line := range strings.Split(strings.TrimSuffix(l.GetText(), "\n"), "\n") {
		recs = append(recs, &ferryv1.LogRecord{At: l.GetAt(), Text: line})
	}
	return recs
}
