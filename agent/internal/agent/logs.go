package agent

import (
	"context"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Bounds on one message of buffered output: well under the controller's
// limits (fleet.MaxJobLogRecords, fleet.MaxJobUpdate).
const (
	logBatchRecords = 256
	logBatchBytes   = 256 << 10
	// logResendEvery is how often unacknowledged output is sent again.
	logResendEvery = 15 * time.Second
)

// logLoop sends buffered job output whenever there is some, until ctx
// ends. Lines the stream does not take wait in the buffer (logbuf) for the
// next session, which sends again everything the controller has not
// acknowledged.
func (a *Agent) logLoop(ctx context.Context) {
	t := time.NewTicker(logResendEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.logs.Notify():
			a.sendLogs()
		case <-t.C:
			// Lines sent but never acknowledged (the controller was over
			// its rate, or dropped the acknowledgement) go again; the
			// controller drops the ones it has.
			if a.logs.Unacked() {
				a.logs.Resend()
				a.sendLogs()
			}
		}
	}
}

// sendLogs sends what the buffer has not sent on this stream yet.
func (a *Agent) sendLogs() {
	a.logSend.Lock()
	defer a.logSend.Unlock()
	for {
		msg := a.logs.Next(logBatchRecords, logBatchBytes)
		if msg == nil {
			return
		}
		if err := a.send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_JobLog{JobLog: msg}}); err != nil {
			// Not connected, or the stream broke: the next session sends
			// it again.
			a.logs.Resend()
			a.log.Debug("job output not sent; kept for the next stream", "job", msg.GetJobId(), "err", err)
			return
		}
	}
}
