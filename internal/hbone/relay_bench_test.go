package hbone

import (
	"io"
	"net"
	"testing"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// BenchmarkRelay16 is ztunnel's data path in one process: 16 apps each do 1 KiB request /
// 1 KiB answer round trips over TCP into a client-side relay, HBONE to a server-side relay,
// and TCP to an echo server. "direct" copies streams into the sockets with CopyTo (the read
// loop writes them); "handoff" with Read and a copying goroutine. cpu-us/op is the whole
// process's CPU per round trip (apps and echo server included); compare GOMAXPROCS with
// -cpu 1,2. Run: go test -run '^$' -bench Relay16 -cpu 1,2 -count 5 ./internal/hbone
func BenchmarkRelay16(b *testing.B) {
	for _, v := range []struct {
		name string
		down func(dst *net.TCPConn, src *Stream)
	}{
		{"direct", func(dst *net.TCPConn, src *Stream) { src.CopyTo(dst, nil) }},
		{"handoff", func(dst *net.TCPConn, src *Stream) {
			buf := make([]byte, 64<<10)
			io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, buf)
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			echoAddr := tcpEcho(b)
			relay := func(tcp *net.TCPConn, s *Stream) {
				go func() {
					v.down(tcp, s)
					tcp.CloseWrite()
				}()
				buf := make([]byte, 64<<10)
				io.CopyBuffer(onlyWriter{s}, onlyReader{tcp}, buf)
				s.CloseWrite()
			}
			e := newEnv(b, func(r *Request) {
				s, err := r.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				up, err := net.Dial("tcp", echoAddr)
				if err != nil {
					return
				}
				defer up.Close()
				relay(up.(*net.TCPConn), s)
			})
			apps := make(chan io.ReadWriter, 16)
			for range 16 {
				app, proxied := testutil.TCPPair(b)
				go relay(proxied, e.dial(b, 80))
				apps <- app
			}
			roundTrips(b, apps)
		})
	}
}

type onlyReader struct{ io.Reader }

type onlyWriter struct{ io.Writer }

// tcpEcho serves TCP echo on loopback until the benchmark ends.
func tcpEcho(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				io.CopyBuffer(onlyWriter{c}, onlyReader{c}, buf)
			}()
		}
	}()
	return ln.Addr().String()
}
