package hbone

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/identity"
)

func FuzzParseRequest(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:8080", "forwarded", `for="1.2.3.4:5"`, false)
	f.Add("CONNECT", "[fd00::1]:80", "traceparent", "00-x", true)
	f.Add("GET", "10.0.0.1:15008", ":path", "/", false)
	f.Add("CONNECT", "host:80", "", "", false)
	local := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, method, authority, name, value string, checkLocal bool) {
		fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":authority", Value: authority}}
		if name != "" {
			fields = append(fields, hpack.HeaderField{Name: name, Value: value})
		}
		ap, hdr, err := parseRequest(fields, local, checkLocal)
		if err != nil {
			if !errors.Is(err, errBadRequest) {
				t.Fatalf("error %v does not wrap errBadRequest", err)
			}
			return
		}
		if method != "CONNECT" {
			t.Fatalf("accepted method %q", method)
		}
		for _, p := range loopPorts {
			if ap.Port() == p {
				t.Fatalf("accepted loop port in %q", authority)
			}
		}
		if checkLocal && ap.Addr() != local {
			t.Fatalf("accepted %v, not the local address", ap)
		}
		if strings.HasPrefix(name, ":") {
			t.Fatalf("accepted pseudo-header %q", name)
		}
		if name != "" && hdr.Get(name) != value && len(hdr.Values(name)) == 0 {
			t.Fatalf("header %q lost", name)
		}
	})
}

// fuzzConn feeds a byte string to the read side and discards writes.
type fuzzConn struct {
	r       io.Reader
	once    sync.Once
	eofOnce sync.Once
	done    chan struct{}
	eof     chan struct{} // closed when the read loop has consumed all input
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.eofOnce.Do(func() { close(c.eof) })
		<-c.done // like a peer that stays connected until we close
	}
	return n, err
}
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { c.once.Do(func() { close(c.done) }); return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 15008} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 40000} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// seedFrames is a valid client conversation after the preface.
func seedFrames(extra func(*http2.Framer)) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:8080"})
	enc.WriteField(hpack.HeaderField{Name: "forwarded", Value: `for="10.0.0.9:1"`})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("hello"))
	fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 10))
	fr.WriteWindowUpdate(0, 1000)
	fr.WritePing(false, [8]byte{1})
	if extra != nil {
		extra(fr)
	}
	return buf.Bytes()
}

// FuzzFrames runs the server's frame reading path on arbitrary input after a
// valid preface: it must neither panic nor hang.
func FuzzFrames(f *testing.F) {
	f.Add(seedFrames(nil))
	f.Add(seedFrames(func(fr *http2.Framer) { fr.WriteData(1, true, nil) }))
	f.Add(seedFrames(func(fr *http2.Framer) { fr.WriteRSTStream(1, http2.ErrCodeCancel) }))
	f.Add(seedFrames(func(fr *http2.Framer) { fr.WriteGoAway(0, http2.ErrCodeNo, nil) }))
	f.Add(seedFrames(func(fr *http2.Framer) { fr.WriteData(3, false, []byte("idle")) }))
	f.Add([]byte{})
	srv, err := NewServer(ServerConfig{
		Certificate: func() (*tls.Certificate, error) { return nil, nil },
		Roots:       func() (*x509.CertPool, error) { return nil, nil },
		TrustDomain: "cluster.local",
		Handler: func(r *Request) {
			if r.Authority.Port() == 8080 {
				s, err := r.Accept()
				if err == nil {
					io.Copy(io.Discard, s)
					s.Close()
				}
				return
			}
			r.Reject(401, "no")
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fc := &fuzzConn{r: bytes.NewReader(data), done: make(chan struct{}), eof: make(chan struct{})}
		c := newConn(fc, false, identity.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "b"}, connConfig{maxStreams: 100})
		c.srv = srv
		if err := c.start(); err != nil {
			t.Fatal(err)
		}
		// Once every frame was read, end the connection as a peer would.
		select {
		case <-c.done:
		case <-fc.eof:
			c.closeWith(errors.New("fuzz input done"))
		case <-time.After(10 * time.Second):
			t.Fatal("read loop stuck")
		}
		c.wait()
	})
}
