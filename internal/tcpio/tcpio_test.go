package tcpio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// pair returns a Conn and the *net.TCPConn at the other end of it, over loopback.
func pair(t *testing.T) (*Conn, *net.TCPConn) {
	d, peer := testutil.TCPPair(t)
	c, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	return c, peer
}

func TestReadWriteEOF(t *testing.T) {
	c, peer := pair(t)
	msg := bytes.Repeat([]byte("hbone"), 1000)
	go func() {
		peer.Write(msg)
		peer.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(msg))
	}
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}

	if n, err := c.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(msg))
	}
	c.CloseWrite()
	got, err = io.ReadAll(peer)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("peer read %d bytes, %v; want the %d written", len(got), err, len(msg))
	}
}

// A Write larger than the socket buffers waits for the peer to read, and WriteSome returns
// what the socket took without waiting.
func TestWriteWaitsWriteSomeDoesNot(t *testing.T) {
	c, peer := pair(t)
	big := make([]byte, 64<<20)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(big)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Write of %d bytes returned (%v) before the peer read anything", len(big), err)
	case <-time.After(200 * time.Millisecond):
	}
	n, err := io.CopyN(io.Discard, peer, int64(len(big)))
	if err != nil || n != int64(len(big)) {
		t.Fatalf("peer read %d, %v; want %d", n, err, len(big))
	}
	if err := <-done; err != nil {
		t.Fatalf("Write: %v", err)
	}

	var took int
	for {
		n, err := c.WriteSome(big)
		if err != nil {
			t.Fatalf("WriteSome: %v", err)
		}
		if n < len(big) {
			took += n
			break
		}
		took += n
	}
	if took == 0 {
		t.Fatal("WriteSome wrote nothing into an empty socket")
	}
	if n, err := c.WriteSome(big); n != 0 || err != nil {
		t.Fatalf("WriteSome into a full socket = %d, %v; want 0, nil", n, err)
	}
}

func TestDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read past the deadline: %#v; want a *net.OpError for read", err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read wait; it must return however late Close comes
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed Conn: %v; want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed Conn: %v; want net.ErrClosed", err)
	}
}

func TestReset(t *testing.T) {
	c, peer := pair(t)
	peer.SetLinger(0)
	peer.Close() // RST
	buf := make([]byte, 10)
	var err error
	for err == nil {
		_, err = c.Read(buf)
	}
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read after the peer's reset: %v; want read: connection reset by peer", err)
	}
	if oe.Addr == nil || oe.Source == nil {
		t.Fatalf("error %v names no addresses", err)
	}
}
