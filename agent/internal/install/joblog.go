package install

import ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"

// LogLine is one line of a job's output: what a step's command printed, or
// what Ferry says about the step (started, what it changed, why it failed,
// what an undo or a rollback restored).
type LogLine struct {
	// Step names the step the line belongs to, as its StepResult does
	// ("check: go version"); empty for the job itself.
	Step   string
	Stream ferryv1.LogStream
	Text   string
}

// LogFunc receives a job's output lines, in order. It must not block for
// long: checks call it while their command runs.
type LogFunc func(LogLine)

// note logs a line of Ferry's own about a step.
func (jc *jobCtx) note(step, text string) {
	jc.logf(LogLine{Step: step, Stream: ferryv1.LogStream_LOG_STREAM_FERRY, Text: text})
}
