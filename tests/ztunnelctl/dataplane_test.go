package ztunnelctl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/zds"
	"github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	zxds "github.com/ambit-mesh/ambit/ztunnel/xds"
)

// The data-plane test's mesh: a client pod in namespace "front", a server pod and its Service
// in "back", both served by one ztunnel on node-1 (so the HBONE hop crosses the bridge between
// the pods' namespaces), and an outsider that is not in the mesh.
const (
	clientIP   = "10.79.0.2"
	serverIP   = "10.79.0.3"
	outsiderIP = "10.79.0.4"
	serviceVIP = "10.96.0.50"
	appPort    = 8080
)

var (
	clientID = identity.Identity{TrustDomain: "cluster.local", Namespace: "front", ServiceAccount: "client"}
	serverID = identity.Identity{TrustDomain: "cluster.local", Namespace: "back", ServiceAccount: "server"}
)

// dataplane is one running mesh for the test.
type dataplane struct {
	idx                      *model.Index
	client, server, outsider *testutil.NetNS
	sniff                    *sniffer
	metrics                  *metrics.Metrics
	proxy                    *proxy.Proxy
	authority                *ca.Authority
	log                      *lockedWriter
}

// startDataplane builds the topology, istiod-lite's model, xDS server and CA in process, the
// nftables capture in both pods, and ztunnel's data path wired as the binary wires it, with the
// pods handed over by a real ZDS server.
func startDataplane(t *testing.T) *dataplane {
	t.Helper()
	ctx := ctxT(t)
	l := newLAN(t)
	d := &dataplane{client: newTestNS(t, "client"), server: newTestNS(t, "server"), outsider: newTestNS(t, "outsider")}
	l.attach(t, d.client, "vc", clientIP+"/24")
	l.attach(t, d.server, "vs", serverIP+"/24")
	l.attach(t, d.outsider, "vo", outsiderIP+"/24")
	d.sniff = l.sniff(t)
	echoApp(t, d.server, appPort)

	// Control plane.
	authority, err := ca.NewSelfSigned("cluster.local")
	must(t, err)
	d.authority = authority
	st := store.NewStore()
	d.idx = model.NewIndex(model.DefaultConfig(), st)
	clientPod := pod("front", "client", "node-1", clientIP, "client", map[string]string{"app": "client"})
	serverPod := pod("back", "server", "node-1", serverIP, "server", map[string]string{"app": "server"})
	for _, p := range []*corev1.Pod{clientPod, serverPod} {
		p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
		must(t, d.idx.SetPod(p))
	}
	must(t, d.idx.SetService(service("back", "echo", serviceVIP, map[string]string{"app": "server"}, 80, appPort)))
	cp := startControlPlane(t, authority, "127.0.0.1:0", st, d.idx)
	caSrv, _ := startCA(t, authority, clientPod, serverPod)

	// ztunnel, wired as ztunnel/run.go wires it.
	d.log = &lockedWriter{}
	log := slog.New(slog.NewTextHandler(d.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	zst := state.New(state.Config{})
	xc, err := zxds.New(zxds.Config{
		Address: cp.srv.addr, RootCAFile: cp.srv.rootFile, ServerName: "istiod.istio-system.svc",
		TokenFile: writeToken(t, "ztunnel-token"), PodIP: "10.250.0.11", PodName: "ztunnel-n1",
		PodNamespace: "istio-system", NodeName: "node-1",
	}, zst)
	must(t, err)
	zst.SetLookuper(xc)
	cm := startManager(t, caSrv, certs.Config{})
	d.metrics = metrics.New()
	pool := hbone.NewPool(hbone.PoolConfig{})
	d.proxy, err = proxy.New(proxy.Config{
		Mesh: zst, Certs: cm, Tunnel: pool, Recorder: proxy.NewMetricsRecorder(d.metrics, log), Log: log,
		HandshakeTimeout: time.Second,
	})
	must(t, err)
	handler := inpod.New(d.proxy, cm, "cluster.local", log)

	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	go func() { xc.Run(runCtx); done <- struct{}{} }()
	sock := filepath.Join(t.TempDir(), "ztunnel.sock")
	zsrv := zds.NewServer(log, 0)
	zln, err := zds.Listen(sock)
	must(t, err)
	go func() { zsrv.Serve(runCtx, zln); done <- struct{}{} }()
	go func() { zds.RunClient(runCtx, sock, handler, log); done <- struct{}{} }()
	policyGen, _ := zst.PolicyChanges()
	go zst.OnPolicyChange(runCtx, policyGen, func(uint64) { d.proxy.Recheck() })
	t.Cleanup(func() {
		stopCtx, c := context.WithTimeout(context.Background(), time.Second)
		defer c()
		d.proxy.Stop(stopCtx)
		cancel()
		for range 3 {
			<-done
		}
		pool.Close()
		zsrv.Close()
		if t.Failed() {
			t.Logf("ztunnel log:\n%s", d.log.String())
		}
	})
	select {
	case <-xc.Synced():
	case <-ctx.Done():
		t.Fatal("ztunnel's xDS client did not sync")
	}

	// Capture and hand-over, as the node agent does for each pod.
	nft, err := redirect.NewNFTables()
	must(t, err)
	waitFor(t, "ztunnel connected over ZDS", zsrv.Connected)
	for _, p := range []struct {
		ns  *testutil.NetNS
		pod *corev1.Pod
	}{{d.client, clientPod}, {d.server, serverPod}} {
		rp := redirect.Pod{UID: string(p.pod.UID), Namespace: p.pod.Namespace, Name: p.pod.Name, Netns: p.ns.Path,
			IPs: []netip.Addr{ip(p.pod.Status.PodIP)}}
		must(t, nft.Enroll(ctx, rp))
		t.Cleanup(func() { nft.Unenroll(context.Background(), rp) })
		f, err := os.Open(p.ns.Path)
		must(t, err)
		must(t, zsrv.Add(ctx, zds.Workload{UID: rp.UID, Netns: f, Info: &zds.WorkloadInfo{
			Name: p.pod.Name, Namespace: p.pod.Namespace, ServiceAccount: p.pod.Spec.ServiceAccountName}}))
	}
	return d
}

// TestDataplane runs traffic through ztunnel's whole data path: capture, HBONE with certificates
// from istiod-lite's CA, authorization from istiod-lite's policies, and the app seeing the real
// client address.
func TestDataplane(t *testing.T) {
	d := startDataplane(t)
	ctx := ctxT(t)
	const marker = "ambit-payload-marker-7f3a"

	t.Run("pod to pod is mutual TLS and the app sees the client's address", func(t *testing.T) {
		for _, addr := range []string{serverIP + ":8080", serviceVIP + ":80"} {
			c, err := dialApp(ctx, d.client, addr)
			if err != nil {
				t.Fatalf("client -> %s: %v", addr, err)
			}
			if host, _, _ := net.SplitHostPort(c.from); host != clientIP {
				t.Errorf("client -> %s: the app saw %s, want the client's own address %s", addr, c.from, clientIP)
			}
			if err := c.roundTrip(marker); err != nil {
				t.Errorf("client -> %s: %v", addr, err)
			}
			c.Close()
		}
		if d.sniff.contains([]byte(marker)) {
			t.Errorf("the payload marker crossed the bridge in clear text")
		}
		if n := d.sniff.segmentsTo(15008); n == 0 {
			t.Errorf("no TCP segment to port 15008 crossed the bridge: traffic did not go over HBONE")
		}
		if n := d.sniff.segmentsTo(appPort); n != 0 {
			t.Errorf("%d TCP segments to the app's port %d crossed the bridge: traffic bypassed the tunnel", n, appPort)
		}
		waitFor(t, "metrics of both ztunnel sides", func() bool {
			return countOpened(t, d.metrics, "source", "mutual_tls") >= 2 && countOpened(t, d.metrics, "destination", "mutual_tls") >= 2
		})
		if got := openedLabel(t, d.metrics, "destination", "source_workload"); got != "client" {
			t.Errorf("the destination side's metrics name source_workload %q, want client", got)
		}
		if !strings.Contains(d.log.String(), "spiffe://cluster.local/ns/front/sa/client") {
			t.Errorf("the access log does not name the client's identity")
		}
	})

	t.Run("plaintext from outside the mesh reaches the app until STRICT", func(t *testing.T) {
		c, err := dialApp(ctx, d.outsider, serverIP+":8080")
		if err != nil {
			t.Fatalf("outsider -> server before STRICT: %v", err)
		}
		if host, _, _ := net.SplitHostPort(c.from); host != outsiderIP {
			t.Errorf("the app saw %s, want the outsider's address %s", c.from, outsiderIP)
		}
		c.Close()
		must(t, d.idx.SetPeerAuthentication(&securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: "back"},
			Spec:       v1beta1.PeerAuthentication{Mtls: &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}},
		}))
		waitFor(t, "STRICT to refuse plaintext", func() bool {
			c, err := dialApp(ctx, d.outsider, serverIP+":8080")
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		// Mesh traffic still flows.
		c, err = dialApp(ctx, d.client, serverIP+":8080")
		if err != nil {
			t.Fatalf("client -> server under STRICT: %v", err)
		}
		c.Close()
		must(t, d.idx.DeletePeerAuthentication("back", "strict"))
	})

	t.Run("a DENY policy refuses new connections and closes open ones", func(t *testing.T) {
		open, err := dialApp(ctx, d.client, serverIP+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		must(t, open.roundTrip("before"))
		applied := time.Now()
		must(t, d.idx.SetAuthorizationPolicy(&securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-front", Namespace: "back"},
			Spec: v1beta1.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "server"}},
				Action:   v1beta1.AuthorizationPolicy_DENY,
				Rules:    []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Namespaces: []string{"front"}}}}}},
			},
		}))
		open.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := open.r.ReadByte(); err == nil {
			t.Fatal("the open connection stayed usable after the DENY policy")
		}
		if took := time.Since(applied); took > time.Second {
			t.Errorf("the open connection closed %v after the policy, want within 1 s", took)
		}
		if _, err := dialApp(ctx, d.client, serverIP+":8080"); err == nil {
			t.Errorf("a new connection was allowed under the DENY policy")
		}
		waitFor(t, "the denial in the log", func() bool { return strings.Contains(d.log.String(), "denied by policy back/deny-front") })
		must(t, d.idx.DeleteAuthorizationPolicy("back", "deny-front"))
		waitFor(t, "traffic after the policy is gone", func() bool {
			c, err := dialApp(ctx, d.client, serverIP+":8080")
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	})

	t.Run("an ALLOW policy admits only what it names", func(t *testing.T) {
		must(t, d.idx.SetAuthorizationPolicy(&securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "allow-other", Namespace: "back"},
			Spec: v1beta1.AuthorizationPolicy{
				Action: v1beta1.AuthorizationPolicy_ALLOW,
				Rules:  []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Principals: []string{"cluster.local/ns/other/sa/x"}}}}}},
			},
		}))
		waitFor(t, "the ALLOW policy to refuse the client", func() bool {
			c, err := dialApp(ctx, d.client, serverIP+":8080")
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		must(t, d.idx.SetAuthorizationPolicy(&securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "allow-other", Namespace: "back"},
			Spec: v1beta1.AuthorizationPolicy{
				Action: v1beta1.AuthorizationPolicy_ALLOW,
				Rules:  []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Principals: []string{"cluster.local/ns/front/sa/client"}}}}}},
			},
		}))
		waitFor(t, "the ALLOW policy naming the client to admit it", func() bool {
			c, err := dialApp(ctx, d.client, serverIP+":8080")
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		must(t, d.idx.DeleteAuthorizationPolicy("back", "allow-other"))
	})

	t.Run("bad input on 15008 is refused and ztunnel keeps serving", func(t *testing.T) {
		hbone := serverIP + ":15008"
		// Garbage instead of a TLS handshake.
		c, err := d.outsider.Handle.DialContext(ctx, "tcp4", hbone)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("an HTTP/1.1 request on 15008 was not refused: the connection stayed open")
		}
		c.Close()
		// A client certificate from another trust domain.
		foreign := foreignCert(t)
		tc, err := d.outsider.Handle.DialContext(ctx, "tcp4", hbone)
		if err != nil {
			t.Fatal(err)
		}
		conn := tls.Client(tc, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{foreign}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		err = conn.Handshake()
		if err == nil {
			// TLS 1.3 reports the server's refusal of our certificate on the first read.
			_, err = conn.Read(make([]byte, 1))
		}
		if err == nil {
			t.Errorf("a client certificate from trust domain evil.example was accepted")
		}
		conn.Close()
		// A silent client that never starts its handshake does not block others, and is dropped
		// after the handshake timeout (1 s here).
		silent, err := d.outsider.Handle.DialContext(ctx, "tcp4", hbone)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		c2, err := dialApp(ctx, d.client, serverIP+":8080")
		if err != nil {
			t.Fatalf("client -> server after bad input: %v", err)
		}
		c2.Close()
		silent.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(silent); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a client that never sent its TLS handshake was still connected after 5 s")
		}
	})

	// Last: it stops ztunnel. Both ends of the connection are this ztunnel's, the outbound
	// side in the client pod and the HBONE inbound side in the server pod; both drain.
	t.Run("stopping drains open connections, then closes the rest", func(t *testing.T) {
		open, err := dialApp(ctx, d.client, serverIP+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		late, err := dialApp(ctx, d.client, serverIP+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer late.Close()
		const drain = 3 * time.Second
		stopped := make(chan time.Time, 1)
		began := time.Now()
		go func() {
			stopCtx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			d.proxy.Stop(stopCtx)
			stopped <- time.Now()
		}()
		// Well inside the drain, both connections still carry traffic.
		time.Sleep(drain / 3)
		for i, c := range []*appConn{open, late} {
			if err := c.roundTrip(fmt.Sprintf("draining %d", i)); err != nil {
				t.Errorf("connection %d opened before the stop, during the drain: %v; want it served until the drain ends", i, err)
			}
		}
		if _, err := dialApp(ctx, d.client, serverIP+":8080"); err == nil {
			t.Errorf("a new connection was served after the stop began; want the listeners closed")
		}
		// One ends by itself: the other is closed when the drain ends.
		open.Close()
		select {
		case <-stopped:
			t.Fatalf("Stop returned after %v with a connection still open; want it to wait for the drain", time.Since(began))
		case <-time.After(drain / 3):
		}
		at := <-stopped
		if took := at.Sub(began); took < drain-100*time.Millisecond || took > drain+2*time.Second {
			t.Errorf("Stop returned after %v; want about the drain, %v", took, drain)
		}
		late.SetDeadline(time.Now().Add(5 * time.Second))
		if err := late.roundTrip("after"); err == nil {
			t.Errorf("the connection still open when the drain ended works after the stop; want it closed")
		}
	})
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

// countOpened reads istio_tcp_connections_opened_total for a reporter and security policy.
func countOpened(t *testing.T, m *metrics.Metrics, reporter, policy string) int {
	t.Helper()
	total := 0
	for _, mf := range testutil.ScrapeMetrics(t, m.WriteText) {
		if mf.GetName() != "istio_tcp_connections_opened_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["reporter"] == reporter && labels["connection_security_policy"] == policy {
				total += int(mt.GetCounter().GetValue())
			}
		}
	}
	return total
}

// openedLabel returns a label of the first istio_tcp_connections_opened_total series of a
// reporter.
func openedLabel(t *testing.T, m *metrics.Metrics, reporter, label string) string {
	t.Helper()
	for _, mf := range testutil.ScrapeMetrics(t, m.WriteText) {
		if mf.GetName() != "istio_tcp_connections_opened_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["reporter"] == reporter {
				return labels[label]
			}
		}
	}
	return ""
}

// foreignCert is a client certificate for spiffe://evil.example/ns/x/sa/y from a CA nobody trusts.
func foreignCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	u, _ := url.Parse("spiffe://evil.example/ns/x/sa/y")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// lockedWriter serializes writes to w and lets the test read what was written.
type lockedWriter struct {
	mu sync.Mutex
	w  strings.Builder
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
