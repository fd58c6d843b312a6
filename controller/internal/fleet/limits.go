// What a node reports is untrusted: these bound what the registry keeps
// of its hellos and heartbeats (and the rollout engine of its job
// reports), so a node cannot grow the controller's memory or the node
// listing past a known size.

package fleet

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The limits on what a node reports.
const (
	// MaxFactLen bounds each string of a node's facts and report fields
	// (host name, kernel, agent version, package names and versions).
	MaxFactLen = 256
	// MaxInstalled bounds the installed packages a node reports.
	MaxInstalled = 256
	// MaxCodecs bounds the artifact encodings a hello advertises.
	MaxCodecs = 8
	// MaxRecentJobs bounds the job outcomes a hello re-reports.
	MaxRecentJobs = 256
	// MaxJobUpdate bounds one job report's encoded size (its steps carry
	// check output, which the agent keeps to 64 KiB a step).
	MaxJobUpdate = 1 << 20
	// MaxJobSteps bounds the step results of one job report.
	MaxJobSteps = 256
	// MaxDisks bounds the file systems a heartbeat reports, and MaxDiskUses
	// what each says the agent keeps there.
	MaxDisks    = 64
	MaxDiskUses = 64
	// MaxJobLogRecords bounds the output lines of one job log message,
	// MaxLogText one line and MaxLogStep its step name (the agent sends
	// at most 256 lines a message, 4 KiB a line, 200 bytes a step name).
	MaxJobLogRecords = 1024
	MaxLogText       = 8 << 10
	MaxLogStep       = MaxFactLen
	// MaxDriftExamples bounds the differences a drift report names per
	// package (its packages are bounded by MaxInstalled).
	MaxDriftExamples = 8
)

// ErrReportTooLarge is matched (errors.Is) by the errors of the Check
// functions.
var ErrReportTooLarge = errors.New("node report over a limit")

type tooLarge struct{ error }

func (tooLarge) Is(target error) bool { return target == ErrReportTooLarge }

func tooLargef(format string, args ...any) error { return tooLarge{fmt.Errorf(format, args...)} }

// CheckHello refuses a hello over a limit.
func CheckHello(h *ferryv1.AgentHello) error {
	if err := checkReport("hello", h.GetAgentVersion(), h.GetFacts(), h.GetInstalled()); err != nil {
		return err
	}
	if err := checkString("hello", "gossip address", h.GetGossipAddress()); err != nil {
		return err
	}
	if err := checkString("hello", "peer address", h.GetPeerAddress()); err != nil {
		return err
	}
	if n := len(h.GetCodecs()); n > MaxCodecs {
		return tooLargef("hello advertises %d codecs: at most %d are accepted", n, MaxCodecs)
	}
	for _, c := range h.GetCodecs() {
		if err := checkString("hello", "codec", c); err != nil {
			return err
		}
	}
	if n := len(h.GetRecentJobs()); n > MaxRecentJobs {
		return tooLargef("hello reports %d recent jobs: at most %d are accepted", n, MaxRecentJobs)
	}
	for _, u := range h.GetRecentJobs() {
		if err := CheckJobUpdate(u); err != nil {
			return err
		}
	}
	return nil
}

// CheckHeartbeat refuses a heartbeat over a limit.
func CheckHeartbeat(hb *ferryv1.Heartbeat) error {
	if err := checkReport("heartbeat", hb.GetAgentVersion(), hb.GetFacts(), hb.GetInstalled()); err != nil {
		return err
	}
	if n := len(hb.GetDisks()); n > MaxDisks {
		return tooLargef("heartbeat reports %d file systems: at most %d are accepted", n, MaxDisks)
	}
	if err := checkDrift(hb.GetDrift()); err != nil {
		return err
	}
	for _, d := range hb.GetDisks() {
		if err := checkString("heartbeat", "file system path", d.GetPath()); err != nil {
			return err
		}
		if n := len(d.GetUses()); n > MaxDiskUses {
			return tooLargef("heartbeat: file system %.64s has %d uses: at most %d are accepted", d.GetPath(), n, MaxDiskUses)
		}
		for _, u := range d.GetUses() {
			if err := checkString("heartbeat", "file system use", u); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDrift refuses a drift report over a limit.
func checkDrift(d *ferryv1.DriftReport) error {
	if n := len(d.GetPackages()); n > MaxInstalled {
		return tooLargef("heartbeat: drift report lists %d packages: at most %d are accepted", n, MaxInstalled)
	}
	for _, p := range d.GetPackages() {
		if err := errors.Join(checkString("heartbeat", "drifted package name", p.GetName()), checkString("heartbeat", "drifted package version", p.GetVersion())); err != nil {
			return err
		}
		if n := len(p.GetExamples()); n > MaxDriftExamples {
			return tooLargef("heartbeat: drift of %.64s names %d differences: at most %d are accepted", p.GetName(), n, MaxDriftExamples)
		}
		for _, e := range p.GetExamples() {
			if err := checkString("heartbeat", "drift example", e); err != nil {
				return err
			}
		}
	}
	return nil
}

// CheckJobUpdate refuses a job report over a limit.
func CheckJobUpdate(u *ferryv1.JobUpdate) error {
	if n := len(u.GetSteps()); n > MaxJobSteps {
		return tooLargef("job %.64s report has %d step results: at most %d are accepted", u.GetJobId(), n, MaxJobSteps)
	}
	if n := proto.Size(u); n > MaxJobUpdate {
		return tooLargef("job %.64s report is %d bytes: at most %d are accepted", u.GetJobId(), n, MaxJobUpdate)
	}
	return nil
}

// CheckJobLog refuses a piece of job output over MaxJobUpdate, with more
// than MaxJobLogRecords lines or a line over MaxLogText (the log kept per
// job is bounded by the store as well).
func CheckJobLog(l *ferryv1.JobLog) error {
	if n := proto.Size(l); n > MaxJobUpdate {
		return tooLargef("job %.64s output of %d bytes in one message: at most %d are accepted", l.GetJobId(), n, MaxJobUpdate)
	}
	if n := len(l.GetRecords()); n > MaxJobLogRecords {
		return tooLargef("job %.64s output of %d lines in one message: at most %d are accepted", l.GetJobId(), n, MaxJobLogRecords)
	}
	for _, r := range l.GetRecords() {
		if n := len(r.GetText()); n > MaxLogText {
			return tooLargef("job %.64s output line %d is %d bytes: at most %d are accepted", l.GetJobId(), r.GetSeq(), n, MaxLogText)
		}
		if n := len(r.GetStep()); n > MaxLogStep {
			return tooLargef("job %.64s output line %d names a step of %d bytes: at most %d are accepted", l.GetJobId(), r.GetSeq(), n, MaxLogStep)
		}
	}
	return nil
}

func checkReport(what, version string, f *ferryv1.Facts, installed []*ferryv1.InstalledPackage) error {
	fields := []struct{ name, v string }{
		{"agent version", version},
		{"host name", f.GetHostname()}, {"os", f.GetOs()}, {"arch", f.GetArch()}, {"kernel", f.GetKernel()},
	}
	for _, fl := range fields {
		if err := checkString(what, fl.name, fl.v); err != nil {
			return err
		}
	}
	if n := len(installed); n > MaxInstalled {
		return tooLargef("%s lists %d installed packages: at most %d are accepted", what, n, MaxInstalled)
	}
	for _, p := range installed {
		for _, fl := range []struct{ name, v string }{
			{"package name", p.GetName()}, {"package version", p.GetVersion()},
			{"artifact digest", p.GetArtifactDigest()}, {"previous version", p.GetPreviousVersion()},
		} {
			if err := checkString(what, fl.name, fl.v); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkString(what, name, v string) error {
	if len(v) > MaxFactLen {
		return tooLargef("%s: %s is %d bytes: at most %d are accepted", what, name, len(v), MaxFactLen)
	}
	return nil
}
