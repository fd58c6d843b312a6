package agent

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/agent/internal/facts"
	"github.com/ferrydeploy/ferry/agent/internal/identity"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/approxdur"
)

// clockWarnAfter is how far this node's clock may be off the controller's
// before the agent warns; the controller's node view uses the same bound.
const clockWarnAfter = 30 * time.Second

// fixClock is how a message tells the operator to fix a node's clock.
const fixClock = "fix it (" + identity.NTPAdvice + ")"

// measureSkew records how far the controller's clock is ahead of this
// node's from the welcome's server time, taken as the controller's clock
// halfway between sending the hello and receiving the welcome.
func (a *Agent) measureSkew(helloSent, welcomed time.Time, server *timestamppb.Timestamp) {
	if !server.IsValid() {
		return // a controller that does not send its time
	}
	skew := server.AsTime().Sub(helloSent.Add(welcomed.Sub(helloSent) / 2))
	a.id.SetSkew(skew, welcomed)
	a.warnClock("measured at the controller's welcome")
}

// clockSkewMetric exports the skew as it stands when scraped.
func (a *Agent) clockSkewMetric() prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_agent_clock_skew_seconds",
		Help: "How far the controller's clock is ahead of this node's (negative: this node's clock is ahead), as measured at the last welcome.",
	}, func() float64 { return a.id.Skew(a.cfg.Now()).Seconds() })
}

// warnClock warns when this node's clock is far off the controller's; how
// says how the skew was found.
func (a *Agent) warnClock(how string) {
	skew := a.id.Skew(a.cfg.Now())
	if skew.Abs() <= clockWarnAfter {
		return
	}
	a.log.Warn(fmt.Sprintf("this node's clock is %s %s the controller's (%s); %s; meanwhile the agent judges its certificate by the controller's clock",
		approxdur.String(skew), aheadOrBehind(skew), how, fixClock), "clock_skew", skew)
}

// aheadOrBehind says where this node's clock stands for a skew
// (controller minus node).
func aheadOrBehind(skew time.Duration) string {
	if skew > 0 {
		return "behind"
	}
	return "ahead of"
}

// facts are the host facts plus the clock skew, so the controller's node
// view shows a node whose clock is off.
func (a *Agent) facts() *ferryv1.Facts {
	f := facts.Detect()
	f.ClockSkew = durationpb.New(a.id.Skew(a.cfg.Now()))
	return f
}

// clockHint explains a connection failure caused by a certificate's
// validity period, which a wrong clock on either side causes, or returns
// "" for any other error. TLS reports these only as text.
func (a *Agent) clockHint(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "certificate has expired or is not yet valid"):
		now := a.cfg.Now()
		return fmt.Sprintf("this node cannot verify the controller's certificate: it is expired or not yet valid at %s, this node's clock %s; if that clock is wrong, %s; if it is right, the controller's certificate has expired: restart the controller, which renews it",
			a.id.ControllerTime(now).UTC().Format(time.RFC3339), a.skewNote(), fixClock)
	case strings.Contains(msg, "tls: expired certificate"), strings.Contains(msg, "tls: bad certificate"):
		leaf := a.id.Certificate().Leaf
		return fmt.Sprintf("the controller refused this node's certificate (valid %s to %s): the clock of this node or of the controller may be wrong; check NTP on both, and re-enroll the node only if the certificate really expired",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return ""
}

// skewNote says how this node's clock was corrected for the controller's.
func (a *Agent) skewNote() string {
	skew := a.id.Skew(a.cfg.Now())
	if skew == 0 {
		return "(not corrected: no skew measured against the controller)"
	}
	return fmt.Sprintf("corrected by the %s it was last found %s the controller's", approxdur.String(skew), aheadOrBehind(skew))
}
