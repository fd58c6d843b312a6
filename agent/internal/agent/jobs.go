package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/agent/internal/fetch"
	"github.com/ferrydeploy/ferry/agent/internal/install"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
	"github.com/ferrydeploy/ferry/shared/enumword"
	"github.com/ferrydeploy/ferry/shared/version"
)

// Fetcher makes an artifact available locally, verified.
type Fetcher interface {
	Ensure(ctx context.Context, digest string, size uint64, progress func(done, total uint64)) (string, error)
	// Hold keeps a cached artifact from being collected while it is used.
	Hold(digest string) (release func())
}

// jobRunner runs the jobs the controller sends, one at a time, and reports
// their progress on whatever stream is up. Final results are kept by the
// installer (those it did not produce, such as a failed download, are
// recorded with it), so a job is never run twice: a repeated job (the
// controller restarted, or re-sent it) gets its recorded result again.
type jobRunner struct {
	a       *Agent
	inst    *install.Installer
	fetcher Fetcher

	mu        sync.Mutex
	queue     chan *ferryv1.Job
	known     map[string]bool // queued or running
	cancels   map[string]context.CancelFunc
	cancelled map[string]bool // cancelled while still queued
	stopBy    time.Time       // set by the first drain: no new jobs after it, none waited for past it
	running   int             // jobs queued or running
}

func newJobRunner(a *Agent, inst *install.Installer) *jobRunner {
	return &jobRunner{a: a, inst: inst, queue: make(chan *ferryv1.Job, 256), known: map[string]bool{},
		cancels: map[string]context.CancelFunc{}, cancelled: map[string]bool{}}
}

// submit queues a job, or re-reports its result if it already ran.
func (r *jobRunner) submit(job *ferryv1.Job) {
	if r.a.onProbation(job.GetId()) {
		return // its result goes out once the controller welcomed this agent
	}
	if res, ok := r.inst.JobResult(job.GetId()); ok {
		r.a.log.Info("job already ran; re-reporting its result", "job", job.GetId(), "phase", res.GetPhase())
		r.report(res)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.known[job.GetId()] || !r.stopBy.IsZero() {
		// Already queued or running; or the agent is stopping, and the
		// controller re-sends the job when the agent is back.
		return
	}
	select {
	case r.queue <- job:
		r.known[job.GetId()] = true
		r.running++
	default:
		r.report(&ferryv1.JobUpdate{JobId: job.GetId(), RolloutId: job.GetRolloutId(), Phase: ferryv1.JobPhase_JOB_PHASE_FAILED,
			Message: "agent job queue is full; try again later", At: timestamppb.Now()})
	}
}

func (r *jobRunner) cancel(jobID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.cancels[jobID]; ok {
		c()
	} else if r.known[jobID] {
		r.cancelled[jobID] = true // still queued: skipped when its turn comes
	}
}

// drain stops accepting jobs and waits, up to timeout, for the queued and
// running ones to finish, so their results go out on the stream. It
// reports whether they did. The deadline is set by the first call, so a
// later one (Run's, after the session's) does not wait a second timeout.
func (r *jobRunner) drain(timeout time.Duration) bool {
	r.mu.Lock()
	if r.stopBy.IsZero() {
		r.stopBy = time.Now().Add(timeout)
	}
	deadline := r.stopBy
	r.mu.Unlock()
	for {
		r.mu.Lock()
		n := r.running
		r.mu.Unlock()
		if n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *jobRunner) report(u *ferryv1.JobUpdate) {
	if u.At == nil {
		u.At = timestamppb.Now()
	}
	if err := r.a.send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_JobUpdate{JobUpdate: u}}); err != nil {
		// Not connected: the final result is kept by the installer and
		// sent again in the next hello.
		r.a.log.Debug("job update not sent", "job", u.GetJobId(), "err", err)
	}
}

// logf buffers a job's output lines (logbuf) and wakes the sender.
func (r *jobRunner) logf(job *ferryv1.Job) install.LogFunc {
	return func(l install.LogLine) {
		r.a.logs.Append(job.GetId(), job.GetRolloutId(), l.Step, l.Stream, l.Text)
	}
}

// note logs a line of the agent's own about the job.
func note(logf install.LogFunc, format string, args ...any) {
	logf(install.LogLine{Stream: ferryv1.LogStream_LOG_STREAM_FERRY, Text: fmt.Sprintf(format, args...)})
}

// run processes jobs until ctx ends.
func (r *jobRunner) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-r.queue:
			r.mu.Lock()
			skip := r.cancelled[job.GetId()]
			delete(r.cancelled, job.GetId())
			r.mu.Unlock()
			if skip {
				r.report(&ferryv1.JobUpdate{JobId: job.GetId(), RolloutId: job.GetRolloutId(), Phase: ferryv1.JobPhase_JOB_PHASE_FAILED,
					Message: "cancelled before it started; nothing was changed"})
			} else {
				r.runJob(ctx, job)
			}
			r.mu.Lock()
			delete(r.known, job.GetId())
			delete(r.cancels, job.GetId())
			r.running--
			r.mu.Unlock()
		}
	}
}

func (r *jobRunner) runJob(ctx context.Context, job *ferryv1.Job) {
	log := r.a.log.With("job", job.GetId(), "rollout", job.GetRolloutId(), "package", job.GetPackage().GetName()+"@"+job.GetPackage().GetVersion(), "kind", job.GetKind())
	jctx, cancel := context.WithCancel(ctx)
	if d := job.GetDeadline().AsDuration(); d > 0 {
		jctx, cancel = context.WithTimeout(ctx, d)
	}
	defer cancel()
	r.mu.Lock()
	r.cancels[job.GetId()] = cancel
	r.mu.Unlock()

	base := &ferryv1.JobUpdate{JobId: job.GetId(), RolloutId: job.GetRolloutId()}
	update := func(phase ferryv1.JobPhase, msg string) *ferryv1.JobUpdate {
		u := proto.Clone(base).(*ferryv1.JobUpdate)
		u.Phase, u.Message, u.At = phase, msg, timestamppb.Now()
		return u
	}
	log.Info("job started")
	r.report(update(ferryv1.JobPhase_JOB_PHASE_ACCEPTED, "accepted"))
	logf := r.logf(job)
	progress := func(u *ferryv1.JobUpdate) { r.report(u) }
	pkgName := job.GetPackage().GetName() + "@" + job.GetPackage().GetVersion()
	switch job.GetKind() {
	case ferryv1.JobKind_JOB_KIND_ROLLBACK:
		note(logf, "rollback of %s started (agent %s)", job.GetPackage().GetName(), version.Version)
	case ferryv1.JobKind_JOB_KIND_PLAN:
		note(logf, "plan of %s started (agent %s)", pkgName, version.Version)
	default:
		note(logf, "install of %s started (agent %s)", pkgName, version.Version)
	}

	var final *ferryv1.JobUpdate
	record := true // a final result the installer did not record itself
	switch job.GetKind() {
	case ferryv1.JobKind_JOB_KIND_ROLLBACK:
		final = r.inst.Rollback(jctx, job.GetId(), job.GetRolloutId(), job.GetPackage().GetName(), progress, logf)
		record = false
	case ferryv1.JobKind_JOB_KIND_REMOVE:
		final = r.inst.Remove(jctx, job.GetId(), job.GetRolloutId(), job.GetPackage().GetName(), progress, logf)
		record = false
	case ferryv1.JobKind_JOB_KIND_INSTALL, ferryv1.JobKind_JOB_KIND_PLAN:
		release := func() {}
		if d := job.GetPackage().GetArtifact().GetDigest(); d != "" && r.fetcher != nil {
			release = r.fetcher.Hold(d)
		}
		if d := job.GetArtifactEncoding().GetDigest(); d != "" && r.fetcher != nil {
			rel, more := release, r.fetcher.Hold(d)
			release = func() { more(); rel() }
		}
		req := install.Request{JobID: job.GetId(), RolloutID: job.GetRolloutId(), Package: job.GetPackage(), Plan: job.GetKind() == ferryv1.JobKind_JOB_KIND_PLAN}
		err := r.fetch(jctx, job, &req, update)
		if err != nil {
			final = update(ferryv1.JobPhase_JOB_PHASE_FAILED, err.Error())
			final.FailedStep = install.DownloadStep(job.GetPackage())
			logf(install.LogLine{Step: final.FailedStep, Stream: ferryv1.LogStream_LOG_STREAM_FERRY, Text: "FAILED: " + err.Error()})
			release()
			break
		}
		final = r.inst.Install(jctx, req, progress, logf)
		release()
		// A streamed download that failed is recorded here, as one that
		// failed before Install (it resumes after the agent's own stop).
		record = req.Stream != nil && final.GetPhase() == ferryv1.JobPhase_JOB_PHASE_FAILED && final.GetFailedStep() == install.DownloadStep(job.GetPackage())
	default:
		final = update(ferryv1.JobPhase_JOB_PHASE_FAILED, fmt.Sprintf("job kind %s is not supported by agent version %s", job.GetKind(), version.Version))
	}
	if final.JobId == "" {
		final.JobId, final.RolloutId = job.GetId(), job.GetRolloutId()
	}
	if up, ok := r.inst.TakeAgentUpdate(job.GetId(), final.GetPhase() == ferryv1.JobPhase_JOB_PHASE_SUCCEEDED && ctx.Err() == nil); ok {
		// The result stays unreported until the new agent is welcomed
		// (or the restored one reports the failure).
		if r.a.swapAgent(ctx, job, up, logf) {
			return
		}
		final = r.a.failAgentUpdate(job.GetId(), final, "the new agent could not be swapped in; ferry-agent "+up.OldVersion+" keeps running (see the job's log)")
	}
	// A job the agent's own stop interrupted is not over: the controller
	// sends it again and the download resumes. Any other end is final and
	// kept before it is sent, since the stream may be down.
	if record && ctx.Err() == nil {
		if err := r.inst.Record(final); err != nil {
			log.Error("could not record a job's result", "err", err)
			final.Message += fmt.Sprintf(" (but recording the result failed: %v)", err)
		}
	}
	r.a.metrics.jobs.WithLabelValues(enumword.Of(final.GetPhase())).Inc()
	log.Info("job finished", "phase", final.GetPhase(), "failed_step", final.GetFailedStep(), "message", final.GetMessage())
	if ctx.Err() == nil {
		note(logf, "job %s: %s", enumword.Of(final.GetPhase()), final.GetMessage())
		r.a.logs.Finish(job.GetId())
	}
	// The output goes first on the stream, so the controller has all of it
	// when it learns the job ended (unless the link is down: then both
	// wait for the next stream).
	r.a.sendLogs()
	r.report(final)
	// The drift check walks every installed tree: after the report, which
	// it would delay.
	r.a.kickDrift()
}

// fetch makes the package's artifact available to req when a step uses
// it, reporting progress at most twice a second: the zstd form when the
// job offers one and every step can take it, else the original; streamed
// (req.Stream, extracted while it arrives) for an install without
// mirrors, else downloaded and verified first (req.ArtifactPath).
func (r *jobRunner) fetch(ctx context.Context, job *ferryv1.Job, req *install.Request, update func(ferryv1.JobPhase, string) *ferryv1.JobUpdate) error {
	art := job.GetPackage().GetArtifact()
	if !r.inst.NeedsArtifact(job.GetPackage()) {
		return nil
	}
	if r.fetcher == nil {
		return fmt.Errorf("artifact %s: this agent cannot download artifacts", art.GetName())
	}
	digest, size := art.GetDigest(), art.GetSize()
	if enc := job.GetArtifactEncoding(); enc.GetCodec() == archive.CodecZstd && enc.GetDigest() != "" && len(job.GetMirrors()) == 0 && r.inst.TakesTranscoded(job.GetPackage()) {
		digest, size, req.ArtifactFormat = enc.GetDigest(), enc.GetSize(), archive.FormatTarZst
	}
	r.report(update(ferryv1.JobPhase_JOB_PHASE_DOWNLOADING, "downloading "+art.GetName()))
	var last time.Time
	progress := func(done, total uint64) {
		if time.Since(last) < 500*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		u := update(ferryv1.JobPhase_JOB_PHASE_DOWNLOADING, fmt.Sprintf("downloading %s: %d of %d bytes", art.GetName(), done, total))
		u.BytesDone, u.BytesTotal = done, total
		r.report(u)
	}
	// The download names in the job's log the peers that served bad
	// bytes, and where its pieces came from (peer exchange).
	logf := r.logf(job)
	ctx = fetch.WithNote(ctx, func(text string) { note(logf, "%s", text) })
	var err error
	mf, mirrored := r.fetcher.(mirrorFetcher)
	sf, streams := r.fetcher.(streamFetcher)
	switch {
	case mirrored && len(job.GetMirrors()) > 0:
		req.ArtifactPath, err = mf.EnsureMirrored(ctx, art.GetDigest(), art.GetSize(), job.GetMirrors(), func(text string) { note(logf, "%s", text) }, progress)
	case streams && !req.Plan:
		req.Stream = streamAdapter{sf.Stream(ctx, digest, size, progress)}
	default:
		req.ArtifactPath, err = r.fetcher.Ensure(ctx, digest, size, progress)
	}
	return err
}

// streamFetcher is a Fetcher that downloads on a goroutine of its own
// while the job extracts what arrived (fetch.Fetcher).
type streamFetcher interface {
	Stream(ctx context.Context, digest string, size uint64, progress func(done, total uint64)) *fetch.Download
}

// streamAdapter is a fetch.Download as the installer takes it.
type streamAdapter struct{ d *fetch.Download }

func (s streamAdapter) Reader() install.StreamReader             { return s.d.Reader() }
func (s streamAdapter) Wait(ctx context.Context) (string, error) { return s.d.Wait(ctx) }

// mirrorFetcher is a Fetcher that tries a job's site-local mirrors before
// the controller (fetch.Fetcher).
type mirrorFetcher interface {
	EnsureMirrored(ctx context.Context, digest string, size uint64, mirrors []*ferryv1.MirrorSource, note func(string), progress func(done, total uint64)) (string, error)
}
