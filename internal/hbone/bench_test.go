package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// The benchmarks compare, over loopback with the same certificates:
// hbone (this package on both sides), tls (raw TLS 1.3 streams: the ceiling)
// and xnet (golang.org/x/net/http2 CONNECT on both sides: the naive baseline).
// Run: go test -run '^$' -bench . -benchtime 2s ./internal/hbone

// app is the server side of a benchmark: it gets the tunnel's reader and
// writer and a flush func.
type app func(r io.Reader, w io.Writer, flush func())

// sink reads until EOF, then answers one byte.
func sink(r io.Reader, w io.Writer, flush func()) {
	io.Copy(io.Discard, r)
	w.Write([]byte{'k'})
	flush()
}

// echoApp writes back every read.
func echoApp(r io.Reader, w io.Writer, flush func()) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			flush()
		}
		if err != nil {
			return
		}
	}
}

type benchConn interface {
	io.ReadWriter
	closeWrite() error
	Close() error
}

type streamConn struct{ *Stream }

func (s streamConn) closeWrite() error { return s.CloseWrite() }

type tlsConn struct{ *tls.Conn }

func (c tlsConn) closeWrite() error { return c.CloseWrite() }

type xnetConn struct {
	pw   *io.PipeWriter
	body io.ReadCloser
}

func (c xnetConn) Read(p []byte) (int, error)  { return c.body.Read(p) }
func (c xnetConn) Write(p []byte) (int, error) { return c.pw.Write(p) }
func (c xnetConn) closeWrite() error           { return c.pw.Close() }
func (c xnetConn) Close() error                { c.pw.Close(); return c.body.Close() }

// Each variant starts a fresh server running a and returns an opener of
// client streams (hbone, xnet: streams sharing one pooled connection; tls: one
// connection each).
var variants = []struct {
	name string
	open func(b *testing.B, a app) func() benchConn
}{
	{"hbone", openHBONE},
	{"tls", openTLS},
	{"xnet", openXNet},
}

func openHBONE(b *testing.B, a app) func() benchConn {
	e := newEnv(b, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		a(s, s, func() {})
		s.CloseWrite()
	})
	return func() benchConn {
		s := e.dial(b, 80)
		b.Cleanup(func() { s.Close() })
		return streamConn{s}
	}
}

func benchCerts(b *testing.B) (*testCA, *tls.Certificate, *tls.Certificate) {
	ca := newCA(b)
	return ca, ca.issue(b, serverID), ca.issue(b, clientID)
}

func listenTLS(b *testing.B, ca *testCA, cert *tls.Certificate, serve func(net.Conn)) net.Addr {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				if err := c.(*tls.Conn).Handshake(); err != nil {
					c.Close()
					return
				}
				serve(c)
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr()
}

func clientConfig(ca *testCA, cert *tls.Certificate) *tls.Config {
	var peer identity.Identity
	id, _ := identity.Parse(serverID)
	return clientTLS(func() (*tls.Certificate, error) { return cert, nil },
		func() (*x509.CertPool, error) { return ca.pool, nil }, []identity.Identity{id}, &peer)
}

func openTLS(b *testing.B, a app) func() benchConn {
	ca, scert, ccert := benchCerts(b)
	addr := listenTLS(b, ca, scert, func(c net.Conn) {
		defer c.Close()
		a(c, c, func() {})
		c.(*tls.Conn).CloseWrite()
	})
	return func() benchConn {
		c, err := tls.Dial("tcp", addr.String(), clientConfig(ca, ccert))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return tlsConn{c}
	}
}

func openXNet(b *testing.B, a app) func() benchConn {
	ca, scert, ccert := benchCerts(b)
	srv := &http2.Server{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		f := w.(http.Flusher)
		f.Flush()
		a(r.Body, w, f.Flush)
	})
	addr := listenTLS(b, ca, scert, func(c net.Conn) { srv.ServeConn(c, &http2.ServeConnOpts{Handler: h}) })
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: clientConfig(ca, ccert)}).DialContext(ctx, network, addr.String())
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return func() benchConn { return xnetStream(b, tr) }
}

func xnetStream(b *testing.B, tr *http2.Transport) benchConn {
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+netip.MustParseAddrPort("127.0.0.1:80").String(), pr)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
	c := xnetConn{pw: pw, body: resp.Body}
	b.Cleanup(func() { c.Close() })
	return c
}

// cpuTime returns the process's user+system CPU time. On a shared machine
// wall-clock figures swing with the load; CPU per operation (both tunnel ends
// run in this process) is the steadier comparison.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkThroughput: one stream, client -> server, 128 KiB writes.
func BenchmarkThroughput(b *testing.B) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			c := v.open(b, sink)()
			buf := make([]byte, 128<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.closeWrite(); err != nil {
				b.Fatal(err)
			}
			var k [1]byte
			if _, err := io.ReadFull(c, k[:]); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(b.N)*float64(len(buf))/1e6/cpu.Seconds(), "MB/cpu-s")
		})
	}
}

// BenchmarkRoundTrip: one stream, 1 KiB request, 1 KiB echoed answer.
func BenchmarkRoundTrip(b *testing.B) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			c := v.open(b, echoApp)()
			req := make([]byte, 1<<10)
			resp := make([]byte, 1<<10)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			c.closeWrite()
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
				b.Log(err)
			}
		})
	}
}

// BenchmarkRoundTrip16: 16 streams at once (like a 16-connection load test),
// each doing 1 KiB request / 1 KiB answer round trips; ns/op is per round trip
// across all streams.
func BenchmarkRoundTrip16(b *testing.B) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			open := v.open(b, echoApp)
			conns := make(chan io.ReadWriter, 16)
			for range 16 {
				conns <- open()
			}
			roundTrips(b, conns)
		})
	}
}

// roundTrips runs the benchmark's round trips on the 16 connections of conns at once, one
// goroutine each: 1 KiB request, 1 KiB answer. ns/op is per round trip across all of them;
// cpu-us/op is the whole process's CPU per round trip.
func roundTrips(b *testing.B, conns <-chan io.ReadWriter) {
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		c := <-conns
		req := make([]byte, 1<<10)
		resp := make([]byte, 1<<10)
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// BenchmarkStreamOpen: a new stream on a pooled connection per op (what a new TCP connection
// through ztunnel costs HBONE): CONNECT, a 1 KiB request, the echoed answer, both ends closed.
// It allocates per op, unlike the round-trip benchmarks, so compare GOGC values with it:
// GOGC=50 go test -run '^$' -bench StreamOpen -cpu 1 ./internal/hbone
func BenchmarkStreamOpen(b *testing.B) {
	e := newEnv(b, echo)
	req := make([]byte, 1<<10)
	resp := make([]byte, 1<<10)
	e.dial(b, 80).Close() // the connection, once
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		s := e.dial(b, 80)
		if _, err := s.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(s, resp); err != nil {
			b.Fatal(err)
		}
		s.CloseWrite()
		if _, err := io.Copy(io.Discard, s); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}
