package istiodlite

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pb "github.com/ambit-mesh/ambit/api/ca"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

// ztunnels runs a stand-in pod with the ztunnel service account on each node, so that tokens
// bound to them carry the node, as a real ztunnel's do.
const ztunnels = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1, namespace: istio-system, labels: {app: ztunnel-stand-in}}
spec:
  nodeName: node-1
  serviceAccountName: ztunnel
  containers: [{name: z, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-2, namespace: istio-system, labels: {app: ztunnel-stand-in}}
spec:
  nodeName: node-2
  serviceAccountName: ztunnel
  containers: [{name: z, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]
`

const app = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: app}
---
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {app: app}}
spec:
  nodeName: node-1
  serviceAccountName: app
  containers: [{name: app, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]
`

// boundToken asks the API server for a token of namespace/sa bound to a pod, as the kubelet
// projects it into the pod.
func boundToken(ctx context.Context, t *testing.T, namespace, sa, pod string) string {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exp := int64(600)
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func newCSR(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestCAIssuesOnlyForPodsOnTheCallersNode(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	istiod := startIstiod(t)
	if err := c.Apply(ctx, "istio-system", ztunnels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Delete(context.Background(), "istio-system", ztunnels) })
	ns := c.Namespace(t, nil)
	if err := c.Apply(ctx, ns, app); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitForPods(ctx, "istio-system", "app=ztunnel-stand-in", 2, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitForPods(ctx, ns, "app=app", 1, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	// The root is published in every namespace; clients verify istiod-lite with it.
	var rootPEM string
	err := c.Wait(ctx, 30*time.Second, "istio-ca-root-cert in "+ns, func(ctx context.Context) (bool, error) {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		rootPEM = cm.Data["root-cert.pem"]
		return rootPEM != "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(rootPEM)) {
		t.Fatalf("istio-ca-root-cert holds no certificate: %q", rootPEM)
	}
	conn, err := grpc.NewClient(istiod.TLSAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	caClient := pb.NewIstioCertificateServiceClient(conn)
	appID := "spiffe://cluster.local/ns/" + ns + "/sa/app"
	request := func(token, impersonate, csrPEM string) (*pb.IstioCertificateResponse, error) {
		md := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		if impersonate != "" {
			md.Fields["ImpersonatedIdentity"] = structpb.NewStringValue(impersonate)
		}
		rctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		return caClient.CreateCertificate(rctx, &pb.IstioCertificateRequest{Csr: csrPEM, ValidityDuration: 3600, Metadata: md})
	}

	// node-1's ztunnel gets the identity of a pod on node-1, over TLS verified with the root.
	node1 := boundToken(ctx, t, "istio-system", "ztunnel", "ztunnel-node-1")
	resp, err := request(node1, appID, newCSR(t))
	if err != nil {
		t.Fatalf("node-1's ztunnel asking for %s: %v", appID, err)
	}
	chain := resp.GetCertChain()
	block, _ := pem.Decode([]byte(chain[0]))
	if block == nil {
		t.Fatalf("certificate chain starts with %q; want a PEM certificate", chain[0])
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != appID || leaf.Subject.CommonName != "" {
		t.Errorf("leaf SANs %v, CN %q; want only %s and no CN", leaf.URIs, leaf.Subject.CommonName, appID)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf does not verify with the published root: %v", err)
	}
	if last := chain[len(chain)-1]; strings.TrimSpace(last) != strings.TrimSpace(rootPEM) {
		t.Errorf("chain does not end with the root")
	}

	refusals := []struct {
		name, token, impersonate, csr string
		code                          codes.Code
		says                          string
	}{
		{"another node's ztunnel", boundToken(ctx, t, "istio-system", "ztunnel", "ztunnel-node-2"), appID, newCSR(t), codes.PermissionDenied, "node-2"},
		{"not a trusted node account", boundToken(ctx, t, ns, "app", "app"), "spiffe://cluster.local/ns/istio-system/sa/ztunnel", newCSR(t), codes.PermissionDenied, ns + "/app"},
		{"a garbage token", "not-a-token", appID, newCSR(t), codes.Unauthenticated, "token"},
		{"a malformed CSR", node1, appID, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", codes.InvalidArgument, "csr"},
	}
	for _, r := range refusals {
		_, err := request(r.token, r.impersonate, r.csr)
		st, _ := status.FromError(err)
		if st.Code() != r.code || !strings.Contains(st.Message(), r.says) {
			t.Errorf("%s: got %v %q; want %v mentioning %q", r.name, st.Code(), st.Message(), r.code, r.says)
		}
	}

	// The outcomes are counted, with Istio's metric names where it has them.
	resp2, err := http.Get("http://" + istiod.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	for _, want := range []string{"citadel_server_csr_count 5", "citadel_server_success_cert_issuance_count 1",
		`istiod_lite_ca_refusals_total{code="PermissionDenied"} 2`, `istiod_lite_ca_refusals_total{code="InvalidArgument"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A token whose pod is gone no longer authenticates.
	gone := boundToken(ctx, t, ns, "app", "app")
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "app", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	err = c.Wait(ctx, 30*time.Second, "the deleted pod's token refused", func(ctx context.Context) (bool, error) {
		_, err := request(gone, "", newCSR(t))
		return status.Code(err) == codes.Unauthenticated, nil
	})
	if err != nil {
		t.Error(err)
	}
}
