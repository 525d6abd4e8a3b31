package grpcwire_test

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
	"math/big"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const testTimeout = 20 * time.Second

func TestMain(m *testing.M) { os.Exit(testutil.CheckMain(m, 5*time.Second)) }

// echo is a grpc-go service written out by hand (no generated code for a test service):
// Unary answers a StringValue according to what it asks, Bidi echoes each message.
type echo struct{}

const (
	unaryMethod = "/ambit.test.Echo/Unary"
	bidiMethod  = "/ambit.test.Echo/Bidi"
)

var echoDesc = grpc.ServiceDesc{
	ServiceName: "ambit.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{MethodName: "Unary", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := &wrapperspb.StringValue{}
		if err := dec(in); err != nil {
			return nil, err
		}
		return unary(ctx, in.GetValue())
	}}},
	Streams: []grpc.StreamDesc{{StreamName: "Bidi", ClientStreams: true, ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
		// The server speaks first: the client must not wait for headers before sending.
		if err := s.SendMsg(wrapperspb.String("hello")); err != nil {
			return err
		}
		for {
			in := &wrapperspb.StringValue{}
			if err := s.RecvMsg(in); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
			switch v := in.GetValue(); {
			case v == "fail":
				return status.Error(codes.FailedPrecondition, "told to fail mid-stream")
			case v == "hang":
				<-s.Context().Done()
				return s.Context().Err()
			default:
				if err := s.SendMsg(wrapperspb.String("echo " + v)); err != nil {
					return err
				}
			}
		}
	}}},
}

func unary(ctx context.Context, v string) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	switch {
	case v == "metadata":
		_, hasDeadline := ctx.Deadline()
		return wrapperspb.String(fmt.Sprintf("authorization=%q clusterid=%q deadline=%v", md.Get("authorization"), md.Get("clusterid"), hasDeadline)), nil
	case v == "error":
		return nil, status.Error(codes.PermissionDenied, "node-1 may not ask for spiffe://x/ns/a/sa/b: 100% wrong\nsecond line")
	case v == "wait":
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case strings.HasPrefix(v, "big:"):
		var n int
		fmt.Sscan(strings.TrimPrefix(v, "big:"), &n)
		return wrapperspb.String(strings.Repeat("x", n)), nil
	}
	return wrapperspb.String("got " + v), nil
}

type server struct {
	addr string
	g    *grpc.Server
	root *x509.CertPool
}

// startServer runs grpc-go's server on loopback, with TLS for istiod.istio-system.svc when
// tlsOn.
func startServer(t *testing.T, tlsOn bool) *server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: lis.Addr().String()}
	var opts []grpc.ServerOption
	if tlsOn {
		cert, root := serving(t)
		s.root = root
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	}
	s.g = grpc.NewServer(opts...)
	s.g.RegisterService(&echoDesc, echo{})
	s.g.RegisterService(&floodDesc, echo{})
	done := make(chan struct{})
	go func() { defer close(done); s.g.Serve(lis) }()
	t.Cleanup(func() { s.g.Stop(); <-done })
	return s
}

func serving(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _ := x509.ParseCertificate(rootDER)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: root.NotBefore, NotAfter: root.NotAfter,
		DNSNames: []string{"istiod.istio-system.svc"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, rootCert, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(rootCert)
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, pool
}

func dial(t *testing.T, addr string, o grpcwire.Options) *grpcwire.Conn {
	t.Helper()
	c, err := grpcwire.New(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func call(ctx context.Context, c *grpcwire.Conn, md grpcwire.Metadata, v string) (string, error) {
	req, _ := proto.Marshal(wrapperspb.String(v))
	b, err := c.Invoke(ctx, unaryMethod, md, req)
	if err != nil {
		return "", err
	}
	out := &wrapperspb.StringValue{}
	if err := proto.Unmarshal(b, out); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

func TestUnary(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			testutil.CheckGoroutines(t, testTimeout)
			s := startServer(t, tlsOn)
			var o grpcwire.Options
			if tlsOn {
				o.TLS = &tls.Config{RootCAs: s.root, ServerName: "istiod.istio-system.svc"}
			}
			c := dial(t, s.addr, o)
			ctx := context.Background()
			for i := range 3 { // one connection, several calls
				got, err := call(ctx, c, nil, fmt.Sprint("ping ", i))
				if want := fmt.Sprint("got ping ", i); err != nil || got != want {
					t.Fatalf("call %d: got %q, %v; want %q", i, got, err, want)
				}
			}
			md := grpcwire.Metadata{"authorization": "Bearer token-1", "ClusterID": "Kubernetes"}
			got, err := call(ctx, c, md, "metadata")
			if want := `authorization=["Bearer token-1"] clusterid=["Kubernetes"] deadline=false`; err != nil || got != want {
				t.Errorf("metadata: got %q, %v; want %q", got, err, want)
			}
			dctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if got, err := call(dctx, c, nil, "metadata"); err != nil || !strings.HasSuffix(got, "deadline=true") {
				t.Errorf("with a deadline: got %q, %v; want the server to see it", got, err)
			}
		})
	}
}

func TestStatusError(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	_, err := call(context.Background(), c, nil, "error")
	var e *grpcwire.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a *grpcwire.Error", err)
	}
	want := "node-1 may not ask for spiffe://x/ns/a/sa/b: 100% wrong\nsecond line"
	if e.Code != grpcwire.PermissionDenied || e.Message != want || e.Method != unaryMethod {
		t.Errorf("got method %q code %v message %q; want %q PermissionDenied %q", e.Method, e.Code, e.Message, unaryMethod, want)
	}
	if s := err.Error(); !strings.Contains(s, unaryMethod) || !strings.Contains(s, "PermissionDenied") || !strings.Contains(s, "100% wrong") {
		t.Errorf("Error() = %q; want the method, the code and the message", s)
	}
	// A method the server does not have: trailers-only Unimplemented.
	_, err = c.Invoke(context.Background(), "/ambit.test.Echo/Nope", nil, nil)
	if grpcwire.CodeOf(err) != grpcwire.Unimplemented {
		t.Errorf("unknown method: got %v, want Unimplemented", err)
	}
	if _, err := c.Invoke(context.Background(), unaryMethod, grpcwire.Metadata{"grpc-timeout": "1S"}, nil); grpcwire.CodeOf(err) != grpcwire.Internal {
		t.Errorf("reserved metadata key: got %v, want an Internal error", err)
	}
}

func TestDeadline(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := call(ctx, c, nil, "wait")
	if grpcwire.CodeOf(err) != grpcwire.DeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want DeadlineExceeded wrapping context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s, want about 200ms", d)
	}
	// The connection still serves.
	if got, err := call(context.Background(), c, nil, "again"); err != nil || got != "got again" {
		t.Errorf("after the deadline: got %q, %v", got, err)
	}
}

func send(t *testing.T, st *grpcwire.Stream, v string) {
	t.Helper()
	b, _ := proto.Marshal(wrapperspb.String(v))
	if err := st.Send(b); err != nil {
		t.Fatalf("Send(%q): %v", v, err)
	}
}

func recv(t *testing.T, st *grpcwire.Stream) string {
	t.Helper()
	b, err := st.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	out := &wrapperspb.StringValue{}
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out.GetValue()
}

func TestBidi(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := c.NewStream(ctx, bidiMethod, grpcwire.Metadata{"authorization": "Bearer t"})
	if err != nil {
		t.Fatal(err)
	}
	if got := recv(t, st); got != "hello" {
		t.Fatalf("first message: got %q, want hello", got)
	}
	for _, v := range []string{"a", "b", "c"} {
		send(t, st, v)
		if got := recv(t, st); got != "echo "+v {
			t.Fatalf("got %q, want %q", got, "echo "+v)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: got %v, want io.EOF (status OK)", err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("Recv again: got %v, want io.EOF", err)
	}
}

func TestBidiStatusMidStream(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	st, err := c.NewStream(context.Background(), bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, st)
	send(t, st, "fail")
	_, err = st.Recv()
	if grpcwire.CodeOf(err) != grpcwire.FailedPrecondition || !strings.Contains(err.Error(), "told to fail mid-stream") {
		t.Fatalf("got %v, want FailedPrecondition with the server's message", err)
	}
	testutil.WaitFor(t, testTimeout, "Send to fail after the stream ended", func() bool {
		b, _ := proto.Marshal(wrapperspb.String("late"))
		return st.Send(b) != nil
	})
}

// TestServerGoesAway stops the server under an open stream: Recv fails with Unavailable,
// and a new stream works once a server listens again.
func TestServerGoesAway(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, st)
	send(t, st, "hang")
	s.g.Stop()
	_, err = st.Recv()
	if code := grpcwire.CodeOf(err); code != grpcwire.Unavailable && code != grpcwire.Internal {
		t.Fatalf("got %v (%v), want Unavailable or Internal", err, code)
	}
	if _, err := call(ctx, c, nil, "x"); grpcwire.CodeOf(err) != grpcwire.Unavailable {
		t.Errorf("call with no server: got %v, want Unavailable", err)
	}
}

func TestCancelStream(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, st)
	send(t, st, "hang")
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err = st.Recv()
	if grpcwire.CodeOf(err) != grpcwire.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want Canceled wrapping context.Canceled", err)
	}
	b, _ := proto.Marshal(wrapperspb.String("late"))
	if err := st.Send(b); grpcwire.CodeOf(err) != grpcwire.Canceled {
		t.Errorf("Send after cancel: got %v, want Canceled", err)
	}
}

func TestMessageTooLarge(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{MaxRecvSize: 1000})
	if got, err := call(context.Background(), c, nil, "big:900"); err != nil || len(got) != 900 {
		t.Fatalf("900 bytes: got %d, %v", len(got), err)
	}
	_, err := call(context.Background(), c, nil, "big:2000")
	if grpcwire.CodeOf(err) != grpcwire.ResourceExhausted || !strings.Contains(err.Error(), "limit of 1000") {
		t.Errorf("got %v, want ResourceExhausted naming the limit", err)
	}
}

func TestTLSWrongServerName(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, true)
	c := dial(t, s.addr, grpcwire.Options{TLS: &tls.Config{RootCAs: s.root, ServerName: "evil.example"}})
	_, err := call(context.Background(), c, nil, "x")
	var verr *tls.CertificateVerificationError
	if grpcwire.CodeOf(err) != grpcwire.Unavailable || !errors.As(err, &verr) {
		t.Errorf("got %v, want Unavailable with the certificate verification error", err)
	}
	// Not trusted at all.
	c2 := dial(t, s.addr, grpcwire.Options{TLS: &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "istiod.istio-system.svc"}})
	if _, err := call(context.Background(), c2, nil, "x"); !errors.As(err, &verr) {
		t.Errorf("unknown root: got %v, want a certificate verification error", err)
	}
}

func TestTimeoutHeader(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{time.Second, "1000000u"},
		{50 * time.Millisecond, "50000000n"},
		{99999999 * time.Nanosecond, "99999999n"},
		{2 * time.Hour, "7200000m"},
		{-time.Second, "1n"},
	} {
		if got := grpcwire.Timeout(tc.d); got != tc.want {
			t.Errorf("timeout(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// TestConnectTimeout: a connection attempt that hangs (a SYN to a Service endpoint that has
// just gone) fails after ConnectTimeout, not when the call's own context ends (never, for a
// long-lived stream), and the next call connects anew.
func TestConnectTimeout(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	var attempts atomic.Int32
	var d net.Dialer
	c := dial(t, s.addr, grpcwire.Options{
		ConnectTimeout: 200 * time.Millisecond,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if attempts.Add(1) == 1 {
				<-ctx.Done() // unanswered
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	began := time.Now()
	if _, err := call(ctx, c, nil, "first"); grpcwire.CodeOf(err) != grpcwire.Unavailable {
		t.Errorf("call over a hanging connection attempt: %v; want Unavailable", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the hanging connection attempt failed after %v; want about the 200ms ConnectTimeout", took)
	}
	if got, err := call(ctx, c, nil, "second"); err != nil || got != "got second" {
		t.Errorf("the next call: %q, %v; want it answered over a new connection", got, err)
	}
}
