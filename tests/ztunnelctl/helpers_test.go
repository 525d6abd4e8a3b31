// Package ztunnelctl tests ztunnel against istiod-lite's real xDS server, model and CA, run in
// process on loopback: no Kubernetes cluster, the model is fed objects directly and the CA
// authenticates callers through a fake clientset's TokenReview reactor. The control-plane side
// (ztunnel/xds, ztunnel/state, ztunnel/certs, internal/authz) is tested on its own; the data
// plane (dataplane_test.go) runs real traffic between pods in network namespaces the test makes,
// captured by the nftables backend and handed to ztunnel over ZDS.
package ztunnelctl

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/istiod-lite/ca"
)

// testTimeout bounds every wait.
const testTimeout = 30 * time.Second

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, what, cond)
}

// tlsServer is a gRPC server over TLS with a serving certificate from authority for
// istiod.istio-system.svc, as istiod-lite serves 15012. rootFile holds the root.
type tlsServer struct {
	g        *grpc.Server
	addr     string
	rootFile string
}

func newTLSServer(t *testing.T, authority *ca.Authority, addr string, register func(*grpc.Server)) *tlsServer {
	t.Helper()
	cert, err := authority.IssueServing([]string{"istiod.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	// Reusing an address (a restarted server) may need a moment for the old socket to close.
	deadline := time.Now().Add(testTimeout)
	for {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, authority.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	t.Cleanup(g.Stop)
	register(g)
	s := &tlsServer{g: g, addr: lis.Addr().String(), rootFile: rootFile}
	go g.Serve(lis)
	return s
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pod(ns, name, node, ip, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func service(ns, name, vip string, selector map[string]string, port, target int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: selector, ClusterIP: vip, ClusterIPs: []string{vip},
			Ports: []corev1.ServicePort{{Name: "tcp", Port: port, TargetPort: intstr.FromInt32(target)}}},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
