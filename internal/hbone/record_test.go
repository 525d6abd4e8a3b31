package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// recordPair connects a recordConn to a plain crypto/tls peer over loopback TCP. With
// ourClient the recordConn is the client, and offers session tickets, so the peer sends a
// NewSessionTicket after the handshake, as other TLS servers may do.
func recordPair(t *testing.T, ourClient bool) (rc *recordConn, peer *tls.Conn, peerRaw net.Conn) {
	t.Helper()
	ca := newCA(t)
	scert, ccert := ca.issue(t, serverID), ca.issue(t, clientID)
	roots := func() (*x509.CertPool, error) { return ca.pool, nil }
	dialed, accepted := testutil.TCPPair(t)
	ours, theirs := net.Conn(dialed), net.Conn(accepted)
	if !ourClient {
		ours, theirs = theirs, ours
	}
	var got identity.Identity
	var cfg *tls.Config
	if ourClient {
		cfg = clientTLS(func() (*tls.Certificate, error) { return ccert, nil }, roots, []identity.Identity{mustID(t, serverID)}, &got)
		// Offer resumption, so that the peer sends a ticket.
		cfg.SessionTicketsDisabled, cfg.ClientSessionCache = false, tls.NewLRUClientSessionCache(1)
		peer = tls.Server(theirs, &tls.Config{
			Certificates: []tls.Certificate{*scert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.pool,
			NextProtos:   []string{"h2"},
		})
	} else {
		cfg = serverTLS(func() (*tls.Certificate, error) { return scert, nil }, roots, "cluster.local", &got)
		peer = tls.Client(theirs, &tls.Config{
			Certificates: []tls.Certificate{*ccert},
			RootCAs:      ca.pool,
			NextProtos:   []string{"h2"},
			ServerName:   "unused",
			// The identity is in the URI SAN, not a DNS name.
			InsecureSkipVerify: true,
		})
	}
	errc := make(chan error, 1)
	go func() { errc <- peer.Handshake() }()
	rc, err := handshakeRecord(ours, cfg, ourClient)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer, theirs
}

// handshakeRecord is handshake without a deadline.
func handshakeRecord(nc net.Conn, cfg *tls.Config, client bool) (*recordConn, error) {
	return handshake(context.Background(), nc, cfg, client)
}

// TestRecordKeyUpdateRequested: asked for a KeyUpdate, a recordConn sends one before its
// next record, so the asker's receiving keys move on too.
func TestRecordKeyUpdateRequested(t *testing.T) {
	ca := newCA(t)
	scert, ccert := ca.issue(t, serverID), ca.issue(t, clientID)
	roots := func() (*x509.CertPool, error) { return ca.pool, nil }
	dialed, accepted := testutil.TCPPair(t)
	var got1, got2 identity.Identity
	type result struct {
		rc  *recordConn
		err error
	}
	srv := make(chan result, 1)
	go func() {
		rc, err := handshakeRecord(accepted, serverTLS(func() (*tls.Certificate, error) { return scert, nil }, roots, "cluster.local", &got1), false)
		srv <- result{rc, err}
	}()
	a, err := handshakeRecord(dialed, clientTLS(func() (*tls.Certificate, error) { return ccert, nil }, roots, []identity.Identity{mustID(t, serverID)}, &got2), true)
	if err != nil {
		t.Fatal(err)
	}
	r := <-srv
	if r.err != nil {
		t.Fatal(r.err)
	}
	b := r.rc
	t.Cleanup(func() { a.Close(); b.Close() })

	before := a.in.secret
	a.wmu.Lock()
	err = a.keyUpdateLocked(true)
	a.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	for _, step := range []struct{ from, to *recordConn }{{a, b}, {b, a}} {
		if _, err := step.from.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if n, err := step.to.Read(buf); err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	}
	if bytes.Equal(a.in.secret, before) {
		t.Fatal("the asked side sent data without updating its keys first")
	}
}

// echoPeer copies everything the peer reads back to it until EOF.
func echoPeer(peer *tls.Conn) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(peer, peer)
		if err == nil {
			err = peer.CloseWrite()
		}
		done <- err
	}()
	return done
}

// roundTrip writes data through rc in batches and checks the echo.
func roundTrip(t *testing.T, rc *recordConn, data []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		for p := data; len(p) > 0; {
			n := min(len(p), 100_000)
			rc.begin()
			_, err := rc.Write(p[:n])
			if eerr := rc.end(); err == nil {
				err = eerr
			}
			if err != nil {
				errc <- err
				return
			}
			p = p[n:]
		}
		errc <- nil
	}()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(rc, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("echo differs from what was sent")
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestRecordInterop: data both ways with crypto/tls at the other end, on either side, across
// key updates: our own at the key limit, ours asking the peer for one (crypto/tls then sends
// its own), and a server peer's NewSessionTicket after the handshake.
func TestRecordInterop(t *testing.T) {
	for _, ourClient := range []bool{true, false} {
		t.Run(fmt.Sprintf("our client %v", ourClient), func(t *testing.T) {
			rc, peer, _ := recordPair(t, ourClient)
			done := echoPeer(peer)
			roundTrip(t, rc, randomBytes(t, 1<<20))

			inBefore, outBefore := rc.in.secret, rc.out.secret
			rc.wmu.Lock()
			err := rc.keyUpdateLocked(true)
			rc.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, rc, randomBytes(t, 300_000))
			if bytes.Equal(rc.in.secret, inBefore) || bytes.Equal(rc.out.secret, outBefore) {
				t.Fatal("a requested KeyUpdate changed the keys of not both directions")
			}

			rc.wmu.Lock()
			rc.keyLimit = 3
			rc.wmu.Unlock()
			outBefore = rc.out.secret
			roundTrip(t, rc, randomBytes(t, 1<<20))
			if bytes.Equal(rc.out.secret, outBefore) || rc.out.seq > 4 {
				t.Fatalf("no KeyUpdate every 3 records: sequence %d", rc.out.seq)
			}

			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			// close_notify reached the peer: its copy loop ended without an error.
			if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
				t.Fatalf("peer: %v", err)
			}
		})
	}
}

// TestRecordCloseNotify: the peer's close_notify is EOF, after all data before it.
func TestRecordCloseNotify(t *testing.T) {
	rc, peer, _ := recordPair(t, true)
	data := randomBytes(t, 200_000)
	go func() {
		peer.Write(data)
		peer.Close()
	}()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d sent", len(got), len(data))
	}
	if n, err := rc.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after close_notify = %d, %v; want EOF", n, err)
	}
}

// TestRecordBadInput: whatever the peer sends after the handshake, Read fails with an error
// that says what was wrong, the peer is told with an alert, and the error stays.
func TestRecordBadInput(t *testing.T) {
	tests := []struct {
		name, want string
		bytes      []byte
	}{
		{"change_cipher_spec", "change_cipher_spec record after the handshake", []byte{20, 3, 3, 0, 1, 1}},
		{"plaintext alert", "unprotected record of type 21", []byte{21, 3, 3, 0, 2, 2, 40}},
		{"oversized record", "record of 18433 bytes, over the limit", []byte{23, 3, 3, 0x48, 0x01}},
		{"short record", "too short to be protected", []byte{23, 3, 3, 0, 5, 1, 2, 3, 4, 5}},
		{"forged record", "bad record MAC", append([]byte{23, 3, 3, 0, 40}, make([]byte, 40)...)},
		{"http request", "unprotected record of type 71", []byte("GET / HTTP/1.1\r\n\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, peer, raw := recordPair(t, true)
			if _, err := raw.Write(tt.bytes); err != nil {
				t.Fatal(err)
			}
			_, err := rc.Read(make([]byte, 1024))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Read error %v, want one with %q", err, tt.want)
			}
			if _, again := rc.Read(make([]byte, 1024)); again != err {
				t.Fatalf("second Read error %v, want the first again", again)
			}
			// The peer gets our alert, protected with our keys.
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, perr := peer.Read(make([]byte, 10)); perr == nil || !strings.Contains(perr.Error(), "remote error") {
				t.Fatalf("peer read %v, want our alert", perr)
			}
		})
	}
}

// TestRecordTruncated: a connection cut inside a record is an unexpected EOF, not a clean one.
func TestRecordTruncated(t *testing.T) {
	rc, _, raw := recordPair(t, true)
	raw.Write([]byte{23, 3, 3, 0, 100, 1, 2, 3})
	raw.(*net.TCPConn).CloseWrite()
	if _, err := rc.Read(make([]byte, 1024)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Read error %v, want unexpected EOF", err)
	}
}

// fuzzKeys are fixed keys for FuzzRecordRead: the writer's and the reader's are the same.
func fuzzKeys(t testing.TB) *trafficKeys {
	secret := sha256.Sum256([]byte("fuzz"))
	k, err := newTrafficKeys(sha256.New, 16, secret[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzRecordRead seals fuzzed records (each: a length byte, then the inner plaintext:
// content, content type, zero padding) and reads them back. Read must never panic and must
// return the application data of the records, in order, up to the first one it refuses.
// While every record is one it must accept (data, whole NewSessionTickets, fewer than
// maxIdleRecords in a row without data), it must return all of their data, then EOF.
func FuzzRecordRead(f *testing.F) {
	f.Add([]byte{4, 'a', 'b', 'c', 23})
	f.Add([]byte{6, 4, 0, 0, 1, 9, 22, 3, 'o', 'k', 23})        // a ticket, then data
	f.Add([]byte{5, 4, 0, 0, 2, 22, 2, 9, 22, 3, 'o', 'k', 23}) // a ticket over two records
	f.Add([]byte{5, 24, 0, 0, 1, 22, 3, 'x', 'y', 23})          // KeyUpdate: the writer keeps its keys
	f.Add([]byte{3, 1, 0, 21, 3, 'n', 'o', 23})                 // close_notify
	f.Add([]byte{6, 'p', 'a', 'd', 23, 0, 0, 1, 0})             // padding; no content type
	f.Fuzz(func(t *testing.T, in []byte) {
		w := &recordConn{out: fuzzKeys(t), keyLimit: defaultKeyLimit}
		var all, want, hs []byte
		accepted := true // every record so far is one Read accepts
		idle := 0
		for len(in) > 0 {
			n := min(int(in[0]), len(in)-1)
			inner := in[1 : 1+n]
			in = in[1+n:]
			if n == 0 {
				continue
			}
			// Seal inner as it is: appendRecordLocked adds the last byte as the type.
			w.appendRecordLocked(inner[n-1], inner[:n-1])
			i := n - 1
			for i >= 0 && inner[i] == 0 {
				i--
			}
			if i < 0 {
				accepted = false
				continue
			}
			typ, content := inner[i], inner[:i]
			if typ == recordTypeData {
				all = append(all, content...)
			}
			if typ != recordTypeData || len(content) == 0 {
				idle++
			} else {
				idle = 0
			}
			switch {
			case !accepted:
			case idle > maxIdleRecords:
				accepted = false
			case typ == recordTypeData && len(hs) == 0:
				want = append(want, content...)
			case typ == recordTypeHS && len(content) > 0:
				hs = append(hs, content...)
				for accepted && len(hs) >= 4 {
					size := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
					if hs[0] != hsNewTicket {
						accepted = false
					} else if len(hs) < 4+size {
						break
					} else {
						hs = hs[4+size:]
					}
				}
			default:
				accepted = false
			}
		}
		fc := &fuzzConn{r: bytes.NewReader(w.wbuf), done: make(chan struct{}), eof: make(chan struct{})}
		close(fc.done)
		r := &recordConn{Conn: fc, raw: make([]byte, rawBufSize), in: fuzzKeys(t)}
		var got []byte
		buf := make([]byte, 1000)
		var err error
		for err == nil {
			var n int
			n, err = r.Read(buf)
			got = append(got, buf[:n]...)
		}
		if !bytes.HasPrefix(all, got) {
			t.Fatalf("read %q, not a prefix of the records' data %q", got, all)
		}
		if accepted && len(hs) == 0 && (err != io.EOF || !bytes.Equal(got, want)) {
			t.Fatalf("well-formed records: read %q and %v, want %q and EOF", got, err, want)
		}
	})
}
