package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	pb "github.com/ambit-mesh/ambit/api/ca"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The cluster of the decision tests: ztunnels on node-1 and node-2, workloads around them.
var (
	ztunnel1    = pod("istio-system", "ztunnel-1", "ztunnel", "node-1", corev1.PodRunning)
	ztunnel2    = pod("istio-system", "ztunnel-2", "ztunnel", "node-2", corev1.PodRunning)
	kubeZtunnel = pod("kube-system", "ztunnel-k", "ztunnel", "node-1", corev1.PodRunning)
	testPods    = []*corev1.Pod{
		ztunnel1, ztunnel2, kubeZtunnel,
		pod("shop", "cart-1", "cart", "node-1", corev1.PodRunning),
		pod("shop", "cart-2", "cart", "node-2", corev1.PodRunning),
		pod("shop", "web-1", "web", "node-2", corev1.PodRunning),
		pod("shop", "new-1", "new", "node-1", corev1.PodPending),
		pod("shop", "job-1", "job", "node-1", corev1.PodSucceeded),
		pod("shop", "crash-1", "crash", "node-1", corev1.PodFailed),
		pod("shop", "crash-2", "crash", "node-2", corev1.PodRunning),
		pod("shop", "plain-1", "", "node-1", corev1.PodRunning), // the default service account
	}
	testTokens = map[string]token{
		"ztunnel-1":          {user: "system:serviceaccount:istio-system:ztunnel", pod: ztunnel1, withNode: true},
		"ztunnel-2":          {user: "system:serviceaccount:istio-system:ztunnel", pod: ztunnel2, withNode: true},
		"ztunnel-1-pre-1.30": {user: "system:serviceaccount:istio-system:ztunnel", pod: ztunnel1},
		"ztunnel-stale-pod": {user: "system:serviceaccount:istio-system:ztunnel",
			pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-1", UID: "an-old-uid"}}},
		"ztunnel-gone-pod": {user: "system:serviceaccount:istio-system:ztunnel",
			pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-gone", UID: "x"}}},
		"ztunnel-unbound":   {user: "system:serviceaccount:istio-system:ztunnel"},
		"ztunnel-kube":      {user: "system:serviceaccount:kube-system:ztunnel", pod: kubeZtunnel, withNode: true},
		"cart":              {user: "system:serviceaccount:shop:cart", pod: testPods[3], withNode: true},
		"cart-api-audience": {user: "system:serviceaccount:shop:cart", audiences: []string{apiServerAudience}},
		"expired":           {user: "system:serviceaccount:shop:cart", expired: true},
		"alice":             {user: "alice"},
	}
)

func newTestServer(t *testing.T, cfg Config) (*Server, *fake.Clientset, *Authority) {
	t.Helper()
	objs := make([]runtime.Object, 0, len(testPods))
	for _, p := range testPods {
		objs = append(objs, p.DeepCopy())
	}
	client := fake.NewClientset(objs...)
	client.PrependReactor("create", "tokenreviews", tokenReviewer(testTokens))
	authority, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, authority, client, startPodLister(t, client))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, client, authority
}

func request(t *testing.T, impersonate any) *pb.IstioCertificateRequest {
	t.Helper()
	req := &pb.IstioCertificateRequest{Csr: string(csrFor(t, newP256(t)))}
	if impersonate != nil {
		md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: impersonate})
		if err != nil {
			t.Fatal(err)
		}
		req.Metadata = md
	}
	return req
}

func withToken(tok string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
}

func TestCreateCertificateDecisions(t *testing.T) {
	const td = "spiffe://cluster.local"
	tests := []struct {
		name        string
		cfg         Config
		ctx         context.Context
		impersonate any // nil: not set
		wantCode    codes.Code
		wantID      string // for OK
		wantMsg     string // for errors
	}{
		// Authentication.
		{name: "no token", ctx: context.Background(), wantCode: codes.Unauthenticated, wantMsg: "authorization: Bearer"},
		{name: "not a bearer token", ctx: metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Basic Y2FydA==")),
			wantCode: codes.Unauthenticated, wantMsg: "no bearer token"},
		{name: "unknown token", ctx: withToken("forged"), wantCode: codes.Unauthenticated, wantMsg: "token review: [invalid bearer token"},
		{name: "expired token", ctx: withToken("expired"), wantCode: codes.Unauthenticated, wantMsg: "token has expired"},
		{name: "API server audience refused", ctx: withToken("cart-api-audience"), wantCode: codes.Unauthenticated, wantMsg: "audience istio-ca"},
		{name: "API server audience accepted when configured", cfg: Config{AcceptAPIServerAudience: true}, ctx: withToken("cart-api-audience"),
			wantID: td + "/ns/shop/sa/cart"},
		{name: "not a service account", ctx: withToken("alice"), wantCode: codes.PermissionDenied, wantMsg: `caller "alice" is not a Kubernetes service account`},
		{name: "API server unreachable", ctx: withToken("api-server-down"), wantCode: codes.Unavailable, wantMsg: "token review: dial tcp"},
		// Own identity.
		{name: "own identity", ctx: withToken("cart"), wantID: td + "/ns/shop/sa/cart"},
		{name: "own identity named explicitly", ctx: withToken("cart"), impersonate: td + "/ns/shop/sa/cart", wantID: td + "/ns/shop/sa/cart"},
		{name: "node agent's own identity", ctx: withToken("ztunnel-1"), wantID: td + "/ns/istio-system/sa/ztunnel"},
		// Impersonation.
		{name: "pod on the caller's node", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/cart", wantID: td + "/ns/shop/sa/cart"},
		{name: "pending pod on the caller's node", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/new", wantID: td + "/ns/shop/sa/new"},
		{name: "pod with the default service account", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/default", wantID: td + "/ns/shop/sa/default"},
		{name: "pod only on another node", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/web",
			wantCode: codes.PermissionDenied, wantMsg: "service account shop/web has no pod on node node-1"},
		{name: "that node's own agent", ctx: withToken("ztunnel-2"), impersonate: td + "/ns/shop/sa/web", wantID: td + "/ns/shop/sa/web"},
		{name: "succeeded pod", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/job",
			wantCode: codes.PermissionDenied, wantMsg: "service account shop/job has no pod on node node-1"},
		{name: "failed pod here, running elsewhere", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop/sa/crash",
			wantCode: codes.PermissionDenied, wantMsg: "service account shop/crash has no pod on node node-1"},
		{name: "no such service account", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/nowhere/sa/nobody",
			wantCode: codes.PermissionDenied, wantMsg: "service account nowhere/nobody has no pod on node node-1"},
		{name: "node from the bound pod (Kubernetes < 1.30)", ctx: withToken("ztunnel-1-pre-1.30"), impersonate: td + "/ns/shop/sa/cart", wantID: td + "/ns/shop/sa/cart"},
		{name: "node from the bound pod, other node", ctx: withToken("ztunnel-1-pre-1.30"), impersonate: td + "/ns/shop/sa/web",
			wantCode: codes.PermissionDenied, wantMsg: "has no pod on node node-1"},
		{name: "bound pod recreated", ctx: withToken("ztunnel-stale-pod"), impersonate: td + "/ns/shop/sa/cart",
			wantCode: codes.PermissionDenied, wantMsg: "now has uid"},
		{name: "bound pod unknown", ctx: withToken("ztunnel-gone-pod"), impersonate: td + "/ns/shop/sa/cart",
			wantCode: codes.PermissionDenied, wantMsg: "which is not known"},
		{name: "token not bound to a pod", ctx: withToken("ztunnel-unbound"), impersonate: td + "/ns/shop/sa/cart",
			wantCode: codes.PermissionDenied, wantMsg: "not bound to a pod"},
		{name: "untrusted caller", ctx: withToken("cart"), impersonate: td + "/ns/shop/sa/new",
			wantCode: codes.PermissionDenied, wantMsg: "caller shop/cart is not a trusted node account (trusted: istio-system/ztunnel)"},
		{name: "node account not in a custom list", cfg: Config{TrustedNodeAccounts: []string{"kube-system/ztunnel"}}, ctx: withToken("ztunnel-1"),
			impersonate: td + "/ns/shop/sa/cart", wantCode: codes.PermissionDenied, wantMsg: "caller istio-system/ztunnel is not a trusted node account"},
		{name: "node account in a custom list", cfg: Config{TrustedNodeAccounts: []string{"kube-system/ztunnel"}}, ctx: withToken("ztunnel-kube"),
			impersonate: td + "/ns/shop/sa/cart", wantID: td + "/ns/shop/sa/cart"},
		{name: "identity in another trust domain", ctx: withToken("ztunnel-1"), impersonate: "spiffe://other.example/ns/shop/sa/cart",
			wantCode: codes.PermissionDenied, wantMsg: `trust domain "other.example"`},
		{name: "identity not a SPIFFE ID", ctx: withToken("ztunnel-1"), impersonate: "cart.shop.svc",
			wantCode: codes.InvalidArgument, wantMsg: "metadata ImpersonatedIdentity"},
		{name: "identity without service account", ctx: withToken("ztunnel-1"), impersonate: td + "/ns/shop",
			wantCode: codes.InvalidArgument, wantMsg: "is not /ns/<namespace>/sa/<service-account>"},
		{name: "identity not a string", ctx: withToken("ztunnel-1"), impersonate: 42.0,
			wantCode: codes.InvalidArgument, wantMsg: "must be a string"},
		{name: "identity empty", ctx: withToken("ztunnel-1"), impersonate: "",
			wantCode: codes.InvalidArgument, wantMsg: "is empty"},
	}
	// One server per distinct Config, made by the parent test so its informer outlives subtests.
	servers := map[string]*Server{}
	key := func(c Config) string { return fmt.Sprint(c.TrustedNodeAccounts, c.AcceptAPIServerAudience) }
	for _, tt := range tests {
		if servers[key(tt.cfg)] == nil {
			servers[key(tt.cfg)], _, _ = newTestServer(t, tt.cfg)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := servers[key(tt.cfg)]
			resp, err := s.CreateCertificate(tt.ctx, request(t, tt.impersonate))
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code: got %v (%v), want %v", got, err, tt.wantCode)
			}
			if err != nil {
				if !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
					t.Errorf("message: got %q, want it to contain %q", status.Convert(err).Message(), tt.wantMsg)
				}
				return
			}
			certs := parseChain(t, resp.GetCertChain())
			checkLeaf(t, certs[0], tt.wantID)
		})
	}
}

func TestCreateCertificateBadCSR(t *testing.T) {
	s, _, _ := newTestServer(t, Config{})
	for _, csr := range []string{"", "not a csr", string(csrFor(t, mustRSA(t, 1024)))} {
		_, err := s.CreateCertificate(withToken("cart"), &pb.IstioCertificateRequest{Csr: csr})
		if got, want := status.Code(err), codes.InvalidArgument; got != want || !strings.HasPrefix(status.Convert(err).Message(), "csr: ") {
			t.Errorf("csr %.20q: got %v, want %v with a message starting %q", csr, err, want, "csr: ")
		}
	}
}

func TestCreateCertificateTTL(t *testing.T) {
	s, _, _ := newTestServer(t, Config{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	for _, tt := range []struct {
		seconds int64
		want    time.Duration
	}{
		{0, time.Hour}, {-1, time.Hour}, {600, 10 * time.Minute}, {3 * 3600, 2 * time.Hour}, {1 << 62, 2 * time.Hour},
	} {
		req := request(t, nil)
		req.ValidityDuration = tt.seconds
		before := time.Now()
		resp, err := s.CreateCertificate(withToken("cart"), req)
		if err != nil {
			t.Fatalf("validity %d: %v", tt.seconds, err)
		}
		leaf := parseChain(t, resp.GetCertChain())[0]
		if got := leaf.NotAfter.Sub(before).Round(time.Minute); got != tt.want {
			t.Errorf("validity %d s: got a lifetime of %s, want %s", tt.seconds, got, tt.want)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	client := fake.NewClientset()
	authority, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	pl := &InformerPodLister{}
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "trust domain mismatch", cfg: Config{TrustDomain: "example.org"}, want: `Config.TrustDomain "example.org" differs`},
		{name: "bad node account", cfg: Config{TrustedNodeAccounts: []string{"ztunnel"}}, want: `trusted node account "ztunnel"`},
	} {
		if _, err := New(tt.cfg, authority, client, pl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	if got, want := DefaultConfig().withDefaults().TrustDomain, "cluster.local"; got != want {
		t.Errorf("default trust domain: got %q, want %q", got, want)
	}
}

// A pod scheduled after start-up becomes visible through the informer, and its end revokes
// the node agent's right to its identity.
func TestImpersonationFollowsPods(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s, client, _ := newTestServer(t, Config{})
	ctx := context.Background()
	const id = "spiffe://cluster.local/ns/late/sa/worker"
	ask := func() codes.Code {
		_, err := s.CreateCertificate(withToken("ztunnel-1"), request(t, id))
		return status.Code(err)
	}
	if got, want := ask(), codes.PermissionDenied; got != want {
		t.Fatalf("before the pod exists: got %v, want %v", got, want)
	}
	p, err := client.CoreV1().Pods("late").Create(ctx, pod("late", "worker-1", "worker", "node-1", corev1.PodPending), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new pod's identity to be granted", func() bool { return ask() == codes.OK })
	p.Status.Phase = corev1.PodSucceeded
	if _, err := client.CoreV1().Pods("late").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the finished pod's identity to be refused", func() bool { return ask() == codes.PermissionDenied })
}

func TestAuditLog(t *testing.T) {
	var buf bytes.Buffer
	s, _, _ := newTestServer(t, Config{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	if _, err := s.CreateCertificate(withToken("ztunnel-1"), request(t, "spiffe://cluster.local/ns/shop/sa/cart")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateCertificate(withToken("ztunnel-1"), request(t, "spiffe://cluster.local/ns/shop/sa/web")); err == nil {
		t.Fatal("impersonating a pod of another node: got a certificate, want a refusal")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("audit lines: got %d (%q), want 2", len(lines), buf.String())
	}
	var issued, refused map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &issued); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &refused); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"msg": "certificate issued", "identity": "spiffe://cluster.local/ns/shop/sa/cart",
		"caller": "istio-system/ztunnel", "caller_pod": "istio-system/ztunnel-1", "node": "node-1",
	} {
		if got := issued[k]; got != want {
			t.Errorf("issued line %s: got %v, want %v", k, got, want)
		}
	}
	for _, k := range []string{"serial", "expiry"} {
		if issued[k] == nil || issued[k] == "" {
			t.Errorf("issued line %s: got %v, want a value", k, issued[k])
		}
	}
	for k, want := range map[string]any{
		"msg": "certificate refused", "level": "WARN", "code": "PermissionDenied", "caller": "istio-system/ztunnel",
		"impersonated_identity": "spiffe://cluster.local/ns/shop/sa/web",
	} {
		if got := refused[k]; got != want {
			t.Errorf("refused line %s: got %v, want %v", k, got, want)
		}
	}
}

// TestGRPC runs the service over a real gRPC connection on loopback, the way ztunnel calls it.
func TestGRPC(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s, _, authority := newTestServer(t, Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	s.Register(gs)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := pb.NewIstioCertificateServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	tests := []struct {
		name        string
		token       string
		impersonate string
		wantCode    codes.Code
		wantID      string
	}{
		{name: "ztunnel for a pod on its node", token: "ztunnel-1", impersonate: "spiffe://cluster.local/ns/shop/sa/cart", wantID: "spiffe://cluster.local/ns/shop/sa/cart"},
		{name: "workload for itself", token: "cart", wantID: "spiffe://cluster.local/ns/shop/sa/cart"},
		{name: "ztunnel for a pod elsewhere", token: "ztunnel-1", impersonate: "spiffe://cluster.local/ns/shop/sa/web", wantCode: codes.PermissionDenied},
		{name: "no token", wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			callCtx := ctx
			if tt.token != "" {
				callCtx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.token)
			}
			var imp any
			if tt.impersonate != "" {
				imp = tt.impersonate
			}
			req := request(t, imp)
			req.ValidityDuration = 3600
			resp, err := client.CreateCertificate(callCtx, req)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code: got %v (%v), want %v", got, err, tt.wantCode)
			}
			if err != nil {
				return
			}
			certs := parseChain(t, resp.GetCertChain())
			if got, want := len(certs), 2; got != want {
				t.Fatalf("chain: got %d certificates, want %d (leaf, root)", got, want)
			}
			if got, want := resp.GetCertChain()[1], string(authority.RootPEM()); got != want {
				t.Errorf("chain root: got %q, want %q", got, want)
			}
			verifyChain(t, certs, authority.RootPEM())
			checkLeaf(t, certs[0], tt.wantID)
			if got := time.Until(certs[0].NotAfter).Round(time.Minute); got != time.Hour {
				t.Errorf("lifetime: got %s, want the 1h asked for", got)
			}
		})
	}
}
