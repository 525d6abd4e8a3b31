package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const testTimeout = 20 * time.Second

// fakeServer is a scriptable delta ADS server: each stream is handed to the test.
type fakeServer struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *fakeStream
}

type fakeStream struct {
	md   metadata.MD
	reqs chan *discovery.DeltaDiscoveryRequest
	send func(*discovery.DeltaDiscoveryResponse) error
	stop chan struct{}
	once sync.Once
}

func (f *fakeStream) close() { f.once.Do(func() { close(f.stop) }) }

func (s *fakeServer) DeltaAggregatedResources(g grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	md, _ := metadata.FromIncomingContext(g.Context())
	fs := &fakeStream{md: md, reqs: make(chan *discovery.DeltaDiscoveryRequest, 100), send: g.Send, stop: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := g.Recv()
			if err != nil {
				errc <- err
				return
			}
			fs.reqs <- r
		}
	}()
	select {
	case s.streams <- fs:
	case <-g.Context().Done():
		return nil
	}
	select {
	case <-fs.stop:
		return nil
	case <-errc:
		return nil
	case <-g.Context().Done():
		return nil
	}
}

func (f *fakeStream) next(t *testing.T) *discovery.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(testTimeout):
		t.Fatal("no request from the client")
	}
	return nil
}

// nextSubscribe returns the next request that subscribes to names, skipping ACKs and
// unsubscriptions.
func (f *fakeStream) nextSubscribe(t *testing.T) *discovery.DeltaDiscoveryRequest {
	t.Helper()
	for {
		if r := f.next(t); len(r.GetResourceNamesSubscribe()) > 0 {
			return r
		}
	}
}

// nextAck returns the next acknowledgement, skipping unsubscriptions.
func (f *fakeStream) nextAck(t *testing.T) *discovery.DeltaDiscoveryRequest {
	t.Helper()
	for {
		if r := f.next(t); r.GetResponseNonce() != "" {
			return r
		}
	}
}

// probeOf returns the sync probe a subscription carries besides name, failing if it is not
// exactly [name, probe].
func probeOf(t *testing.T, r *discovery.DeltaDiscoveryRequest, name string) string {
	t.Helper()
	got := r.GetResourceNamesSubscribe()
	if len(got) != 2 || got[0] != name || !strings.HasPrefix(got[1], probePrefix) || r.GetTypeUrl() != AddressType {
		t.Fatalf("on-demand request: got %v, want [%s <probe>]", r, name)
	}
	return got[1]
}

func (f *fakeStream) push(t *testing.T, r *discovery.DeltaDiscoveryResponse) {
	t.Helper()
	if err := f.send(r); err != nil {
		t.Fatal(err)
	}
}

// recordingSink records updates; fail refuses resources by name.
type recordingSink struct {
	mu      sync.Mutex
	have    map[string]map[string]Resource
	updates int
	fail    map[string]bool
}

func newSink() *recordingSink {
	return &recordingSink{have: map[string]map[string]Resource{AddressType: {}, AuthorizationType: {}}, fail: map[string]bool{}}
}

func (s *recordingSink) Update(typeURL string, set []Resource, removed []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates++
	var bad []string
	for _, n := range removed {
		delete(s.have[typeURL], n)
	}
	for _, r := range set {
		if s.fail[r.Name] {
			bad = append(bad, r.Name)
			continue
		}
		s.have[typeURL][r.Name] = r
	}
	if len(bad) > 0 {
		return fmt.Errorf("sink refused %v", bad)
	}
	return nil
}

func (s *recordingSink) names(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.have[typeURL] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

type env struct {
	t      *testing.T
	srv    *fakeServer
	client *Client
	sink   *recordingSink
	cancel context.CancelFunc
	done   chan error
	token  string // path
}

// start runs a fake server (TLS when tlsOn) and a Client against it.
func start(t *testing.T, tlsOn bool) *env {
	t.Helper()
	testutil.CheckGoroutines(t, testTimeout)
	dir := t.TempDir()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	cfg := Config{
		Address: lis.Addr().String(), PodIP: "10.0.0.9", PodName: "ztunnel-abc", PodNamespace: "istio-system", NodeName: "node-1",
		InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		TokenFile: filepath.Join(dir, "token"),
	}
	if tlsOn {
		cert, rootFile := serving(t, dir)
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
		cfg.RootCAFile, cfg.ServerName = rootFile, "istiod.istio-system.svc"
	} else {
		cfg.Plaintext = true
	}
	if err := os.WriteFile(cfg.TokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := &fakeServer{streams: make(chan *fakeStream, 10)}
	g := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(lis)
	sink := newSink()
	c, err := New(cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	e := &env{t: t, srv: srv, client: c, sink: sink, cancel: cancel, done: done, token: cfg.TokenFile}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("Run did not return after cancel")
		}
		g.Stop()
	})
	return e
}

func (e *env) stream() *fakeStream {
	e.t.Helper()
	select {
	case s := <-e.srv.streams:
		e.t.Cleanup(s.close)
		return s
	case <-time.After(testTimeout):
		e.t.Fatal("client did not connect")
	}
	return nil
}

// serving makes a root and a serving certificate for istiod.istio-system.svc.
func serving(t *testing.T, dir string) (tls.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _ := x509.ParseCertificate(rootDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: []string{"istiod.istio-system.svc"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, rootCert, leafKey.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}, rootFile
}

func workloadRes(t *testing.T, name, version string, aliases ...string) *discovery.Resource {
	t.Helper()
	body, err := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: name, Name: name}}})
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: version, Resource: body, Aliases: aliases}
}

func policyRes(t *testing.T, name string) *discovery.Resource {
	t.Helper()
	body, err := anypb.New(&security.Authorization{Name: name, Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: "ns/" + name, Version: "1", Resource: body}
}

// initial reads the two first requests of a stream, keyed by type.
func initial(t *testing.T, s *fakeStream) map[string]*discovery.DeltaDiscoveryRequest {
	t.Helper()
	out := map[string]*discovery.DeltaDiscoveryRequest{}
	for range 2 {
		r := s.next(t)
		out[r.GetTypeUrl()] = r
	}
	return out
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, what, cond)
}

func TestSubscribeOverTLSWithNodeAndToken(t *testing.T) {
	e := start(t, true)
	s := e.stream()
	if got := s.md.Get("authorization"); !slices.Equal(got, []string{"Bearer token-1"}) {
		t.Errorf("authorization metadata: got %q, want [Bearer token-1]", got)
	}
	reqs := initial(t, s)
	for _, typ := range []string{AddressType, AuthorizationType} {
		r := reqs[typ]
		if r == nil {
			t.Fatalf("no initial request for %s; got %v", typ, reqs)
		}
		if got, want := r.GetNode().GetId(), "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local"; got != want {
			t.Errorf("%s node id: got %q, want %q", typ, got, want)
		}
		if got := r.GetNode().GetMetadata().GetFields()[NodeNameKey].GetStringValue(); got != "node-1" {
			t.Errorf("%s NODE_NAME: got %q, want node-1", typ, got)
		}
		if got := r.GetResourceNamesSubscribe(); !slices.Equal(got, []string{"*"}) {
			t.Errorf("%s subscribe: got %q, want [*]", typ, got)
		}
	}
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{workloadRes(t, "w1", "v1")}})
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AuthorizationType, Nonce: "n2", Resources: []*discovery.Resource{policyRes(t, "p1")}})
	for _, nonce := range []string{"n1", "n2"} {
		ack := s.next(t)
		if ack.GetResponseNonce() != nonce || ack.GetErrorDetail() != nil {
			t.Errorf("ack: got nonce %q error %v, want nonce %q and no error", ack.GetResponseNonce(), ack.GetErrorDetail(), nonce)
		}
	}
	select {
	case <-e.client.Synced():
	case <-time.After(testTimeout):
		t.Fatal("Synced not closed after both types answered")
	}
	if got := e.sink.names(AddressType); !slices.Equal(got, []string{"w1"}) {
		t.Errorf("sink addresses: got %v, want [w1]", got)
	}
	if got := e.sink.names(AuthorizationType); !slices.Equal(got, []string{"ns/p1"}) {
		t.Errorf("sink policies: got %v, want [ns/p1]", got)
	}
}

func TestNACKKeepsStream(t *testing.T) {
	e := start(t, false)
	s := e.stream()
	initial(t, s)
	bad := &discovery.Resource{Name: "bad", Version: "1", Resource: &anypb.Any{TypeUrl: AddressType, Value: []byte{0xff, 0xff}}}
	wrongType := &discovery.Resource{Name: "wrong", Version: "1", Resource: policyRes(t, "x").Resource}
	e.sink.fail["refused"] = true
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{
		workloadRes(t, "good", "v1"), bad, wrongType, workloadRes(t, "refused", "v1"),
	}})
	nack := s.next(t)
	msg := nack.GetErrorDetail().GetMessage()
	if nack.GetResponseNonce() != "n1" || !strings.Contains(msg, "bad:") || !strings.Contains(msg, "wrong:") || !strings.Contains(msg, "refused") {
		t.Errorf("nack: got nonce %q message %q, want n1 naming bad, wrong and refused", nack.GetResponseNonce(), msg)
	}
	if got := e.sink.names(AddressType); !slices.Equal(got, []string{"good"}) {
		t.Errorf("sink: got %v, want [good]", got)
	}
	// The stream lives on: a removal is applied and acknowledged.
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n2", RemovedResources: []string{"good"}})
	if ack := s.next(t); ack.GetResponseNonce() != "n2" || ack.GetErrorDetail() != nil {
		t.Errorf("ack: got %v, want a plain ack of n2", ack)
	}
	if got := e.sink.names(AddressType); len(got) != 0 {
		t.Errorf("sink after removal: got %v, want none", got)
	}
	if e.client.Connects() != 1 {
		t.Errorf("connects: got %d, want 1", e.client.Connects())
	}
}

func TestLookup(t *testing.T) {
	e := start(t, false)
	s := e.stream()
	initial(t, s)
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n0", Resources: []*discovery.Resource{workloadRes(t, "local", "v1", "/10.0.0.1")}})
	s.next(t)

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// Held already: by name and by alias, answered without asking.
	for _, name := range []string{"local", "/10.0.0.1"} {
		if found, err := e.client.Lookup(ctx, name); !found || err != nil {
			t.Errorf("Lookup(%s): got %v, %v, want true", name, found, err)
		}
	}

	type result struct {
		found bool
		err   error
	}
	res := make(chan result, 1)
	go func() {
		f, err := e.client.Lookup(ctx, "/10.0.9.9")
		res <- result{f, err}
	}()
	probe := probeOf(t, s.nextSubscribe(t), "/10.0.9.9")
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{workloadRes(t, "remote", "v1", "/10.0.9.9")},
		RemovedResources: []string{probe}})
	if r := <-res; !r.found || r.err != nil {
		t.Errorf("Lookup of a remote workload: got %v, %v, want true", r.found, r.err)
	}
	s.nextAck(t)

	go func() {
		f, err := e.client.Lookup(ctx, "/10.0.9.10")
		res <- result{f, err}
	}()
	probe = probeOf(t, s.nextSubscribe(t), "/10.0.9.10")
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n2", RemovedResources: []string{"/10.0.9.10", probe}})
	if r := <-res; r.found || r.err != nil {
		t.Errorf("Lookup of a missing name: got %v, %v, want false, nil", r.found, r.err)
	}
	s.nextAck(t)
	// Subscribing to a name held already (a Service, for its endpoints): the server sends only
	// what is new, and answers the probe.
	go func() {
		f, err := e.client.Subscribe(ctx, "local")
		res <- result{f, err}
	}()
	probe = probeOf(t, s.nextSubscribe(t), "local")
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n2b", RemovedResources: []string{probe}})
	if r := <-res; !r.found || r.err != nil {
		t.Errorf("Subscribe to a held name: got %v, %v, want true", r.found, r.err)
	}
	s.nextAck(t)
	// Answered as missing while subscribed: a second lookup is answered at once.
	if found, err := e.client.Lookup(ctx, "/10.0.9.10"); found || err != nil {
		t.Errorf("second Lookup of a missing name: got %v, %v", found, err)
	}
	// The remote workload goes away: its alias is no longer known.
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n3", RemovedResources: []string{"remote"}})
	s.nextAck(t)
	if found, err := e.client.Lookup(ctx, "/10.0.9.9"); found || err != nil {
		t.Errorf("Lookup after removal: got %v, %v, want false", found, err)
	}

	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := e.client.Lookup(short, "never-answered"); err == nil {
		t.Errorf("Lookup without an answer: got no error, want the context's")
	}
}

func TestReconnectSendsVersionsAndNames(t *testing.T) {
	e := start(t, false)
	s := e.stream()
	initial(t, s)
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{workloadRes(t, "w1", "v1"), workloadRes(t, "w2", "v7")}})
	s.next(t)
	s.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AuthorizationType, Nonce: "n2", Resources: []*discovery.Resource{policyRes(t, "p")}})
	s.next(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pending := make(chan error, 1)
	go func() {
		found, err := e.client.Lookup(ctx, "/10.9.9.9")
		if err == nil && found {
			err = fmt.Errorf("found a name the server never sent")
		}
		pending <- err
	}()
	s.nextSubscribe(t) // not answered before the stream drops

	if err := os.WriteFile(e.token, []byte("token-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.close() // the server drops the stream
	s2 := e.stream()
	if got := s2.md.Get("authorization"); !slices.Equal(got, []string{"Bearer token-2"}) {
		t.Errorf("token after reconnect: got %q, want the re-read token-2", got)
	}
	reqs := initial(t, s2)
	addr := reqs[AddressType]
	if got, want := addr.GetInitialResourceVersions(), map[string]string{"w1": "v1", "w2": "v7"}; !mapsEqual(got, want) {
		t.Errorf("address initial versions: got %v, want %v", got, want)
	}
	if got, want := addr.GetResourceNamesSubscribe(), []string{"*", "/10.9.9.9"}; !slices.Equal(got, want) {
		t.Errorf("address subscribe: got %v, want %v", got, want)
	}
	if got, want := reqs[AuthorizationType].GetInitialResourceVersions(), map[string]string{"ns/p": "1"}; !mapsEqual(got, want) {
		t.Errorf("policy initial versions: got %v, want %v", got, want)
	}
	waitFor(t, "two connects", func() bool { return e.client.Connects() == 2 })
	// The first response of the new stream answers the names its first request carried.
	s2.push(t, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "m1"})
	select {
	case err := <-pending:
		if err != nil {
			t.Errorf("Lookup pending across the reconnect: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Lookup pending across the reconnect was not answered by the new stream's first response")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestLookupAfterStop(t *testing.T) {
	e := start(t, false)
	e.stream()
	e.cancel()
	waitFor(t, "Run to stop", func() bool {
		_, err := e.client.Lookup(context.Background(), "x")
		return errors.Is(err, ErrClosed)
	})
}

func TestNewRefusesBadConfig(t *testing.T) {
	if _, err := New(Config{}, newSink()); err == nil {
		t.Error("New without Address: got no error")
	}
	c, err := New(Config{Address: "127.0.0.1:1"}, newSink())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "RootCAFile") {
		t.Errorf("Run without TLS roots: got %v, want an error naming RootCAFile", err)
	}
}

// TestDeltaADSMethod: the path ztunnel calls is Envoy's.
func TestDeltaADSMethod(t *testing.T) {
	if want := discovery.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName; deltaADSMethod != want {
		t.Errorf("got %s, want %s", deltaADSMethod, want)
	}
}
