package hbone

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// HTTP/2 parameters of DESIGN.md section 4.
const (
	streamWindow = 4 << 20  // SETTINGS_INITIAL_WINDOW_SIZE we advertise
	connWindow   = 16 << 20 // connection receive window
	maxFrameSize = 1 << 20  // SETTINGS_MAX_FRAME_SIZE we advertise and our cap on sending
	// Window credit is returned in batches of a quarter window.
	streamUpdateThreshold = streamWindow / 4
	connUpdateThreshold   = connWindow / 4

	defaultPingInterval = 10 * time.Second
	defaultPingTimeout  = 20 * time.Second

	initialWindow   = 65535 // RFC 9113 default for both windows
	defaultMaxFrame = 16384
	maxHeaderList   = 64 << 10
	maxWindow       = 1<<31 - 1
	readBufSize     = 64 << 10
	writeBufSize    = 64 << 10
)

// ErrConnClosed is returned by stream operations after the HBONE connection
// carrying the stream has closed. The connection's own error is wrapped next to it.
var ErrConnClosed = errors.New("hbone connection closed")

// ErrStreamReset is wrapped by stream errors after the peer sent RST_STREAM.
var ErrStreamReset = errors.New("hbone stream reset")

// errGoAway is wrapped when a stream cannot start because the peer sent GOAWAY.
var errGoAway = errors.New("connection is going away")

type ctlKind uint8

const (
	ctlWindowUpdate ctlKind = iota
	ctlRST
	ctlPing
	ctlPingAck
	ctlSettingsAck
)

// ctlFrame is a small frame queued by goroutines that must not block on the
// connection's write lock (the read loop above all).
type ctlFrame struct {
	kind ctlKind
	sid  uint32
	val  uint32
	data [8]byte
}

// connConfig is what a connection needs from its server or pool.
type connConfig struct {
	pingInterval, pingTimeout time.Duration
	idleTimeout               time.Duration // client only; 0 = never
	maxStreams                uint32        // SETTINGS_MAX_CONCURRENT_STREAMS we advertise (server)
	onClose                   func(*conn)
}

// conn is one HBONE connection (either side): an HTTP/2 connection that only
// carries CONNECT streams.
type conn struct {
	nc     net.Conn    // the TLS connection
	rec    *recordConn // nc, when it is one: gathers the records of a flush into one write
	client bool
	peer   identity.Identity
	cfg    connConfig
	srv    *Server // server side only

	br  *bufio.Reader
	rfr *frameReader // reads non-DATA frames from br; used by the read loop only

	wwait        atomic.Int32 // goroutines waiting for wmu: the last one flushes
	flushDue     atomic.Bool  // bw holds frames that unlockWriteSoon left for a flush
	wmu          sync.Mutex   // wmu guards the fields below (the write side)
	bw           *bufio.Writer
	henc         *hpack.Encoder
	hbuf         bytes.Buffer
	hdr          [9]byte
	henTableSize uint32

	mu           sync.Mutex // mu guards the fields below and every Stream's state
	streams      map[uint32]*Stream
	sendWin      int64 // connection send window
	recvWin      int64 // connection receive window left to the peer
	recvUnacked  int64 // bytes consumed (or discarded) not yet credited back
	peerInitWin  int64
	peerMaxFrame uint32
	peerMaxStr   uint32
	peerTable    uint32
	nextID       uint32 // client: next stream id
	lastPeerID   uint32 // server: highest stream id the peer opened
	reserved     int    // client: slots reserved by Pool.Dial not yet opened
	goaway       bool   // no new streams (GOAWAY sent or received)
	err          error  // set once when the connection closed
	idleSince    time.Time
	pingOut      bool
	pingSent     time.Time
	// closeTimer closes a server's drained connection after GOAWAY if the client does not.
	closeTimer *time.Timer

	ctlMu     sync.Mutex // ctlMu guards ctlq
	ctlq      []ctlFrame
	ctlSpare  []ctlFrame
	ctlNotify chan struct{}

	done chan struct{}
	wg   sync.WaitGroup // the read and control loops
}

func newConn(nc net.Conn, client bool, peer identity.Identity, cfg connConfig) *conn {
	if cfg.pingInterval <= 0 {
		cfg.pingInterval = defaultPingInterval
	}
	if cfg.pingTimeout <= 0 {
		cfg.pingTimeout = defaultPingTimeout
	}
	c := &conn{
		nc:           nc,
		client:       client,
		peer:         peer,
		cfg:          cfg,
		br:           bufio.NewReaderSize(nc, readBufSize),
		bw:           bufio.NewWriterSize(nc, writeBufSize),
		streams:      make(map[uint32]*Stream),
		sendWin:      initialWindow,
		recvWin:      connWindow,
		peerInitWin:  initialWindow,
		peerMaxFrame: defaultMaxFrame,
		peerMaxStr:   1000,
		peerTable:    4096,
		henTableSize: 4096,
		nextID:       1,
		idleSince:    time.Now(),
		ctlNotify:    make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	c.rfr = newFrameReader(c.br)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start writes our preface and settings and starts the read and control loops.
func (c *conn) start() error {
	c.lockWrite()
	if c.client {
		c.bw.WriteString(h2.ClientPreface)
	}
	settings := []setting{
		{h2.SettingMaxFrameSize, maxFrameSize},
		{h2.SettingInitialWindowSize, streamWindow},
		{h2.SettingMaxHeaderListSize, maxHeaderList},
	}
	if c.client {
		settings = append(settings, setting{h2.SettingEnablePush, 0})
	} else {
		settings = append(settings, setting{h2.SettingMaxConcurrentStreams, c.cfg.maxStreams})
	}
	c.writeSettingsLocked(settings...)
	c.writeWindowUpdateLocked(0, connWindow-initialWindow)
	if err := c.unlockWrite(); err != nil {
		return fmt.Errorf("write preface: %w", err)
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.ctlLoop()
	return nil
}

// releaseWrite gives up the write lock after a failed write, without flushing.
func (c *conn) releaseWrite() {
	if c.rec != nil {
		c.rec.end()
	}
	c.wmu.Unlock()
}

// lockWrite takes the write lock and opens a batch: the TLS records written
// until the flush leave in one syscall.
func (c *conn) lockWrite() {
	c.wwait.Add(1)
	c.wmu.Lock()
	c.wwait.Add(-1)
	if c.rec != nil {
		c.rec.begin()
	}
}

// unlockWrite flushes unless another writer is queued (it will flush), so
// concurrent writers share TLS records and syscalls.
func (c *conn) unlockWrite() error {
	var err error
	if c.wwait.Load() == 0 {
		c.flushDue.Store(false)
		err = c.bw.Flush()
		if c.rec != nil {
			if berr := c.rec.end(); err == nil {
				err = berr
			}
		}
	}
	c.wmu.Unlock()
	if err != nil {
		c.closeWith(fmt.Errorf("write: %w", err))
	}
	return err
}

// soonMax bounds what unlockWriteSoon leaves buffered: a writer that finds more flushes at
// once, so bulk transfers keep writing in large batches.
const soonMax = 16 << 10

// unlockWriteSoon is unlockWrite for a small frame: the writer lets the goroutines that are
// ready to run now go first, then flushes what is buffered unless one of them has. Streams
// that a network poll woke together (requests of several connections arriving at once) then
// leave in one TLS record and one syscall, and reach the peer as one TCP segment read with one
// read; a lone frame costs one runtime.Gosched. Like unlockWrite, it returns once the frame is
// written, or is left to a writer queued behind it.
func (c *conn) unlockWriteSoon() error {
	if c.wwait.Load() > 0 || c.bw.Buffered() > soonMax {
		return c.unlockWrite()
	}
	c.flushDue.Store(true)
	var err error
	if c.rec != nil {
		// The records sealed while the frame was buffered: none unless bw overflowed.
		err = c.rec.end()
	}
	c.wmu.Unlock()
	if err != nil {
		c.closeWith(fmt.Errorf("write: %w", err))
		return err
	}
	runtime.Gosched()
	if !c.flushDue.Load() {
		return nil // flushed by a writer that ran meanwhile
	}
	c.lockWrite()
	return c.unlockWrite()
}

// writeDataLocked writes one DATA frame; wmu must be held.
func (c *conn) writeDataLocked(sid uint32, p []byte, end bool) error {
	var flags uint8
	if end {
		flags = h2.FlagEndStream
	}
	if err := c.writeFrameHeaderLocked(len(p), h2.FrameData, flags, sid); err != nil {
		return err
	}
	if len(p) <= c.bw.Available() {
		_, err := c.bw.Write(p)
		return err
	}
	// A payload bw cannot hold goes to TLS as it is, after what bw holds: bufio would first
	// copy as much of it as fits, and in a bulk transfer that copy was about a twentieth of
	// the sending ztunnel's CPU. The frame header then ends a short TLS record of its own.
	if err := c.bw.Flush(); err != nil {
		return err
	}
	_, err := c.nc.Write(p)
	return err
}

// writeHeadersLocked encodes fields and writes HEADERS (+CONTINUATION); wmu must be held.
func (c *conn) writeHeadersLocked(sid uint32, fields []hpack.HeaderField, end bool) error {
	c.mu.Lock()
	table, maxFrame := c.peerTable, c.peerMaxFrame
	c.mu.Unlock()
	if table != c.henTableSize {
		c.henc.SetMaxDynamicTableSizeLimit(table)
		c.henTableSize = table
	}
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := block
	if len(first) > int(maxFrame) {
		first = first[:maxFrame]
	}
	block = block[len(first):]
	if err := c.writeHeaderFragmentLocked(sid, true, end, len(block) == 0, first); err != nil {
		return err
	}
	for len(block) > 0 {
		frag := block
		if len(frag) > int(maxFrame) {
			frag = frag[:maxFrame]
		}
		block = block[len(frag):]
		if err := c.writeHeaderFragmentLocked(sid, false, false, len(block) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}

// queue hands a control frame to the control loop.
func (c *conn) queue(f ctlFrame) {
	c.ctlMu.Lock()
	c.ctlq = append(c.ctlq, f)
	c.ctlMu.Unlock()
	select {
	case c.ctlNotify <- struct{}{}:
	default:
	}
}

// ctlLoop writes queued control frames, sends PINGs, enforces the PING timeout
// and, on the client, the idle timeout.
func (c *conn) ctlLoop() {
	defer c.wg.Done()
	tick := c.cfg.pingInterval
	if c.cfg.idleTimeout > 0 && c.cfg.idleTimeout/4 < tick {
		tick = max(c.cfg.idleTimeout/4, time.Millisecond)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastPing := time.Now()
	for {
		select {
		case <-c.done:
			return
		case <-c.ctlNotify:
		case now := <-t.C:
			c.mu.Lock()
			if c.pingOut && now.Sub(c.pingSent) >= c.cfg.pingTimeout {
				c.mu.Unlock()
				c.closeWith(fmt.Errorf("no PING answer from %v within %v", c.nc.RemoteAddr(), c.cfg.pingTimeout))
				return
			}
			ping := !c.pingOut && now.Sub(lastPing) >= c.cfg.pingInterval
			if ping {
				c.pingOut, c.pingSent, lastPing = true, now, now
			}
			idle := c.cfg.idleTimeout > 0 && len(c.streams) == 0 && c.reserved == 0 && now.Sub(c.idleSince) >= c.cfg.idleTimeout
			if idle {
				c.goaway = true
			}
			c.mu.Unlock()
			if idle {
				c.shutdown(h2.ErrCodeNo, errIdle)
				return
			}
			if ping {
				c.queue(ctlFrame{kind: ctlPing})
			}
			continue
		}
		c.ctlMu.Lock()
		q := c.ctlq
		c.ctlq = c.ctlSpare[:0]
		c.ctlMu.Unlock()
		if len(q) == 0 {
			c.ctlSpare = q
			continue
		}
		c.lockWrite()
		var err error
		for i := range q {
			f := &q[i]
			switch f.kind {
			case ctlWindowUpdate:
				err = c.writeWindowUpdateLocked(f.sid, f.val)
			case ctlRST:
				err = c.writeRSTLocked(f.sid, h2.ErrCode(f.val))
			case ctlPing:
				err = c.writePingLocked(false, f.data)
			case ctlPingAck:
				err = c.writePingLocked(true, f.data)
			case ctlSettingsAck:
				err = c.writeSettingsAckLocked()
			}
			if err != nil {
				break
			}
		}
		if err != nil {
			c.releaseWrite()
			c.closeWith(fmt.Errorf("write: %w", err))
			return
		}
		c.unlockWrite()
		c.ctlSpare = q[:0]
	}
}

var errIdle = errors.New("idle connection released")

// goAwayGrace is how long a server waits, after its GOAWAY, for the client to
// close a connection with no streams left; the client does as soon as it has
// read the GOAWAY. Closing first could reset the connection under a request the
// client sent before that: the request would fail instead of being retried on
// a new connection.
const goAwayGrace = time.Second

// goAway tells the peer to open no more streams; the connection closes once
// its open streams are done (a server's: see goAwayGrace).
func (c *conn) goAway() {
	c.lockWrite()
	c.mu.Lock()
	c.goaway = true
	last := c.lastPeerID
	c.mu.Unlock()
	if err := c.writeGoAwayLocked(last, h2.ErrCodeNo); err != nil {
		c.releaseWrite()
		c.closeWith(fmt.Errorf("write: %w", err))
		return
	}
	c.unlockWrite()
	c.mu.Lock()
	if len(c.streams) == 0 {
		c.closeDrainedLocked()
	}
	c.mu.Unlock()
}

// closeDrainedLocked closes a connection that has no streams left after GOAWAY:
// a client's at once, a server's once the client had goAwayGrace to close it.
func (c *conn) closeDrainedLocked() {
	switch {
	case c.err != nil:
	case c.client:
		go c.closeWith(errGoAway)
	case c.closeTimer == nil:
		c.closeTimer = time.AfterFunc(goAwayGrace, func() { c.closeWith(errGoAway) })
	}
}

// shutdown sends GOAWAY (best effort: it does not wait behind a stuck writer)
// and closes the connection.
func (c *conn) shutdown(code h2.ErrCode, err error) {
	if c.wmu.TryLock() {
		c.mu.Lock()
		last := c.lastPeerID
		c.mu.Unlock()
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		if c.writeGoAwayLocked(last, code) == nil {
			c.bw.Flush()
		}
		if c.rec != nil {
			c.rec.end()
		}
		c.wmu.Unlock()
	}
	c.closeWith(err)
}

// closeWith closes the connection once, failing every stream with err.
func (c *conn) closeWith(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.goaway = true
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	for _, s := range c.streams {
		s.cond.Broadcast()
	}
	c.mu.Unlock()
	close(c.done)
	c.nc.Close()
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
}

// creditConnLocked returns n bytes of connection window to the peer, in batches.
func (c *conn) creditConnLocked(n int64) {
	c.recvUnacked += n
	if c.recvUnacked >= connUpdateThreshold && c.err == nil {
		c.queue(ctlFrame{kind: ctlWindowUpdate, sid: 0, val: uint32(c.recvUnacked)})
		c.recvWin += c.recvUnacked
		c.recvUnacked = 0
	}
}

// removeLocked drops a finished stream from the connection.
func (c *conn) removeLocked(s *Stream) {
	if c.streams[s.id] != s {
		return
	}
	delete(c.streams, s.id)
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		if c.goaway {
			// Drained after GOAWAY: close without blocking the caller.
			c.closeDrainedLocked()
		}
	}
}

// wait blocks until both loops of a closed connection have stopped.
func (c *conn) wait() { c.wg.Wait() }
