package hbone

import (
	"net"
	"sync"

	"github.com/ambit-mesh/ambit/internal/tcpio"
)

// batchMax bounds what a batch holds before it is written out early, so a
// large frame does not leave a large buffer behind.
const batchMax = 256 << 10

// batchConn sits between the TLS connection and the socket. crypto/tls writes
// every record (at most 16 KiB of data) with its own write; while the HBONE
// writer flushes, batchConn gathers those records and sends them in one write,
// so a 64 KiB DATA frame costs one syscall instead of five. Outside a batch
// (the handshake, alerts, a KeyUpdate answered by the read loop) writes go
// straight through, in order with the batched ones.
type batchConn struct {
	net.Conn

	mu  sync.Mutex // mu guards the fields below and orders writes to Conn
	on  bool       // a batch is open: Write appends to buf
	buf []byte
}

// Write is called by crypto/tls, which serializes its writes.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		return b.Conn.Write(p)
	}
	if len(b.buf)+len(p) > batchMax {
		if err := b.writeLocked(); err != nil {
			return 0, err
		}
		if len(p) > batchMax {
			return b.Conn.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// begin opens a batch.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
}

// end closes the batch and writes what it gathered.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	return b.writeLocked()
}

func (b *batchConn) writeLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// fastConn is nc with tcpio's reads and writes when it is a TCP connection: the HBONE
// connection's reads and writes are its hot path.
func fastConn(nc net.Conn) net.Conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		if c, err := tcpio.New(tc); err == nil {
			return c
		}
	}
	return nc
}
