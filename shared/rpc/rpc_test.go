package rpc

import (
	"testing"

	"github.com/ferrydeploy/ferry/shared/pki"
)

func TestDefaultPolicy(t *testing.T) {
	cases := []struct {
		method string
		public bool
		roles  []pki.Role
	}{
		{"/ferry.v1.EnrollmentService/Enroll", true, nil},
		{"/ferry.v1.AgentService/Connect", false, []pki.Role{pki.RoleAgent}},
		{"/ferry.v1.AgentService/DownloadArtifact", false, []pki.Role{pki.RoleAgent}},
		{"/ferry.v1.TokenService/CreateToken", false, []pki.Role{pki.RoleAdmin}},
		{"/ferry.v1.RolloutService/CreateRollout", false, []pki.Role{pki.RoleAdmin}},
		{"/ferry.v1.ReplicaService/ReplicateArtifact", false, []pki.Role{pki.RoleController}},
		{"/ferry.v1.ReplicaService/FetchArtifact", false, []pki.Role{pki.RoleController}},
		// Controller to controller only.
		{"/ferry.v1.ClusterService/Relay", false, []pki.Role{pki.RoleController}},
		// Unknown services default to admin-only, never public.
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", false, []pki.Role{pki.RoleAdmin}},
		{"/ferry.v1.EnrollmentServiceX/Enroll", false, []pki.Role{pki.RoleAdmin}},
	}
	for _, tc := range cases {
		t.Run(tc.method, func(t *testing.T) {
			a := DefaultPolicy(tc.method)
			if a.Public != tc.public || len(a.Roles) != len(tc.roles) || (len(a.Roles) == 1 && a.Roles[0] != tc.roles[0]) {
				t.Errorf("DefaultPolicy(%s) = %+v, want public=%v roles=%v", tc.method, a, tc.public, tc.roles)
			}
		})
	}
}
