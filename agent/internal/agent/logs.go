package agent

import (
	"context"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Bounds on one message of buffered output: well under the controller's
// limits (fleet.MaxJobLogRecords, fleet.MaxJobUpdate).
const (
	logBatchRecords = 256
	logBatchBytes   = 256 << 10
)

// logLoop sends buffered job output whenever there is some, until ctx
// ends. Lines the stream does not take wait in the buffer (logbuf) for the
// next session, which sends again everything the controller has not
// acknowledged.
func (a *Agent) logLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.logs.Notify():
			a.sendLogs()
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
