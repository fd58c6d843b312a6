package scale

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// credentialFile is the admin credential the controller writes (the file
// ferryctl reads): PEM blocks in YAML. Only the controller module may
// import its credential package, so the few fields are read here.
type credentialFile struct {
	Controller  string `yaml:"controller"`
	CA          string `yaml:"ca"`
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// DialAdmin opens an admin connection with the credential file at path,
// to the address the file names unless addr is set.
func DialAdmin(path, addr string) (*grpc.ClientConn, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read admin credential: %w", err)
	}
	var f credentialFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("admin credential %s: %w", path, err)
	}
	pair, err := tls.X509KeyPair([]byte(f.Certificate), []byte(f.Key))
	if err != nil {
		return nil, fmt.Errorf("admin credential %s: certificate and key: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(f.CA)) {
		return nil, fmt.Errorf("admin credential %s: no CA certificate in its ca field", path)
	}
	if addr == "" {
		addr = f.Controller
	}
	if addr == "" {
		return nil, errors.New("admin credential names no controller address; pass one")
	}
	conf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }, pool)
	conn, err := grpc.NewClient(addr, rpc.DialOptions(conf)...)
	if err != nil {
		return nil, fmt.Errorf("dial controller %s: %w", addr, err)
	}
	return conn, nil
}

// ListNodes returns every node, following ListNodes' pages as ferryctl
// does.
func ListNodes(ctx context.Context, nodes ferryv1.NodeServiceClient, opts ...grpc.CallOption) ([]*ferryv1.Node, error) {
	var all []*ferryv1.Node
	req := &ferryv1.ListNodesRequest{}
	for {
		resp, err := nodes.ListNodes(ctx, req, opts...)
		if err != nil {
			return nil, err
		}
		all = append(all, resp.GetNodes()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}
