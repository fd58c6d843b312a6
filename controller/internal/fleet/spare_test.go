package fleet

import (
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Acknowledgements of job output never take the room jobs need.
func TestDispatchSpareLeavesHalfTheQueueToJobs(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	s := f.attach("n1")
	ack := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_LogAck{LogAck: &ferryv1.JobLogAck{JobId: "j", Seq: 1}}}
	sent := 0
	for f.DispatchSpare("n1", ack) == nil {
		sent++
		if sent > cap(s.send) {
			t.Fatal("DispatchSpare never refuses")
		}
	}
	if sent > cap(s.send)/2+1 {
		t.Errorf("DispatchSpare queued %d of %d", sent, cap(s.send))
	}
	job := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: &ferryv1.Job{Id: "j"}}}
	for k := sent; k < cap(s.send); k++ {
		if err := f.Dispatch("n1", job); err != nil {
			t.Fatalf("job %d of a queue holding %d acknowledgements: %v", k-sent+1, sent, err)
		}
	}
}
