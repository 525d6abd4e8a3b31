package hbone

import (
	"net"
	"sync"
)

// batchConn sits between crypto/tls and the TCP socket. crypto/tls writes
// every record (at most 16 KiB) with its own Write call; while the HBONE
// connection's write lock is held, batchConn collects those records and sends
// them with one syscall when the lock holder flushes. Outside a batch (the
// handshake, alerts sent from the read side) writes go straight through.
type batchConn struct {
	net.Conn

	mu       sync.Mutex // mu guards the fields below
	batching bool
	buf      []byte
	err      error
}

const batchSize = 256 << 10

func newBatchConn(nc net.Conn) *batchConn { return &batchConn{Conn: nc} }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if !b.batching {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	if len(b.buf)+len(p) > batchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= batchSize {
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = make([]byte, 0, batchSize)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// begin starts collecting writes.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end sends what was collected and stops collecting.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 || b.err != nil {
		return b.err
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	b.err = err
	return err
}
