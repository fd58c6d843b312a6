package server

import (
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// FuzzEnrollRequest feeds the validation of enrollment requests, the one
// handler anyone on the network reaches, with arbitrary bytes: it must not
// panic, must refuse with a status, and what it accepts must be sound.
// Seeds: testdata/fuzz/FuzzEnrollRequest.
func FuzzEnrollRequest(f *testing.F) {
	good, err := proto.Marshal(&ferryv1.EnrollRequest{Token: "abcdef.0123456789abcdef", NodeId: "n1", CsrDer: testCSR(f), Labels: map[string]string{"zone": "a"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req ferryv1.EnrollRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		e, err := parseEnroll(&req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("refusal is not a status: %v", err)
			}
			return
		}
		if len(e.tokenID) != tokenIDLen || len(e.secret) != tokenSecretLen || e.csr == nil {
			t.Fatalf("accepted %+v", e)
		}
		if err := pki.ValidateName("node ID", req.GetNodeId()); err != nil {
			t.Fatalf("accepted node ID %q: %v", req.GetNodeId(), err)
		}
		if _, ok := req.GetLabels()["group"]; ok {
			t.Fatal(`accepted the reserved label "group"`)
		}
	})
}
