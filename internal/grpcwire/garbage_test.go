package grpcwire_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestGarbage runs a server that answers with what no gRPC server sends: each call fails with
// a clear error, nothing crashes, and the connection serves the next call.
func TestGarbage(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	msg := func(flags byte, n uint32, body string) []byte {
		b := make([]byte, 5, 5+len(body))
		b[0] = flags
		binary.BigEndian.PutUint32(b[1:], n)
		return append(b, body...)
	}
	type answer struct {
		status   int
		ctype    string
		body     []byte
		trailers map[string]string
	}
	ok := map[string]string{"Grpc-Status": "0"}
	cases := map[string]struct {
		a        answer
		code     grpcwire.Code
		contains string
	}{
		"flags":        {answer{200, "application/grpc", msg(0x80, 3, "abc"), ok}, grpcwire.Internal, "message flags 0x80"},
		"compressed":   {answer{200, "application/grpc", msg(1, 3, "abc"), ok}, grpcwire.Internal, "compressed"},
		"huge":         {answer{200, "application/grpc", msg(0, 0xffffffff, "abc"), ok}, grpcwire.ResourceExhausted, "4294967295 bytes"},
		"truncated":    {answer{200, "application/grpc", msg(0, 100, "abc"), ok}, grpcwire.Internal, "inside a message of 100 bytes"},
		"short-prefix": {answer{200, "application/grpc", []byte{0, 0}, ok}, grpcwire.Internal, "inside a message header"},
		"no-status":    {answer{200, "application/grpc", msg(0, 3, "abc"), nil}, grpcwire.Internal, "without a grpc-status"},
		"bad-status":   {answer{200, "application/grpc", msg(0, 3, "abc"), map[string]string{"Grpc-Status": "x"}}, grpcwire.Unknown, `grpc-status "x"`},
		"html":         {answer{200, "text/html", []byte("<html>"), nil}, grpcwire.Unknown, `content-type "text/html"`},
		"http-503":     {answer{503, "text/plain", []byte("busy"), nil}, grpcwire.Unavailable, "HTTP status 503"},
		"two-messages": {answer{200, "application/grpc", append(msg(0, 1, "a"), msg(0, 1, "b")...), ok}, grpcwire.Internal, "more than one response"},
		"no-message":   {answer{200, "application/grpc", nil, ok}, grpcwire.Internal, "no response message"},
		"trailers-only": {answer{200, "application/grpc", nil, map[string]string{"Grpc-Status": "5", "Grpc-Message": "no%20such%zz"}},
			grpcwire.NotFound, "no such%zz"},
	}
	mux := http.NewServeMux()
	for name, tc := range cases {
		mux.HandleFunc("/t."+name+"/M", func(w http.ResponseWriter, r *http.Request) {
			a := tc.a
			for k := range a.trailers {
				w.Header().Add("Trailer", k)
			}
			w.Header().Set("Content-Type", a.ctype)
			if name == "trailers-only" {
				for k, v := range a.trailers {
					w.Header().Set(k, v)
				}
				w.WriteHeader(a.status)
				return
			}
			w.WriteHeader(a.status)
			w.Write(a.body)
			for k, v := range a.trailers {
				w.Header().Set(k, v)
			}
		})
	}
	mux.HandleFunc("/t.fine/M", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.Write(msg(0, 2, "ok"))
		w.Header().Set("Grpc-Status", "0")
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &p}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	c := dial(t, lis.Addr().String(), grpcwire.Options{})
	for name, tc := range cases {
		_, err := c.Invoke(context.Background(), "/t."+name+"/M", nil, []byte("req"))
		if grpcwire.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.contains) {
			t.Errorf("%s: got %v (%v), want %v containing %q", name, err, grpcwire.CodeOf(err), tc.code, tc.contains)
		}
		if b, err := c.Invoke(context.Background(), "/t.fine/M", nil, nil); err != nil || string(b) != "ok" {
			t.Errorf("%s: the next call: got %q, %v; want ok", name, b, err)
		}
	}
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 'x'})
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	var body atomic.Pointer[[]byte]
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.Write(*body.Load())
		w.Header().Set("Grpc-Status", "0")
	})}
	go srv.Serve(lis)
	defer srv.Close()
	c, err := grpcwire.New(lis.Addr().String(), grpcwire.Options{MaxRecvSize: 1 << 16})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		body.Store(&b)
		st, err := c.NewStream(context.Background(), "/f.F/M", nil)
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	})
}
