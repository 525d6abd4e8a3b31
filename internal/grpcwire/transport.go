package grpcwire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// transport is the client side of one HTTP/2 connection, written on a net.Conn rather than
// on net/http's client, the last user of net/http in ztunnel: about 0.9 MB of its binary
// (issue #4). It speaks what gRPC calls need: streams opened with HEADERS, DATA both ways with
// flow control, trailers, RST_STREAM, PING answers, GOAWAY, SETTINGS. No server push, no
// priorities, and no pings of its own: while it sends nothing (an idle xDS stream), a grpc-go
// server counts each ping closer than 5 minutes to the last as a strike and at the third closes
// the connection (GOAWAY ENHANCE_YOUR_CALM).
//
// One goroutine reads frames and never waits for the write side: the frames it must answer
// with (SETTINGS and PING acknowledgements, WINDOW_UPDATE, RST_STREAM) are queued for a second
// goroutine that writes them, so a server that does not read while it writes cannot stall the
// reads that would let it go on.
type transport struct {
	nc     net.Conn
	br     *bufio.Reader
	hdec   *hpack.Decoder // the read loop's only
	forget func(*transport)

	// wmu guards the fields below: the write side. Streams are numbered and their headers
	// HPACK-encoded in the order they are written, as the protocol requires.
	wmu      sync.Mutex
	bw       *bufio.Writer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	encTable uint32

	// mu guards the fields below and the state of every h2stream of the connection.
	mu             sync.Mutex
	streams        map[uint32]*h2stream
	nextID         uint32
	sendWin        int64 // connection window for what we send
	recvWin        int64 // what the server may still send on the connection
	recvUnacked    int64 // received, not yet returned with WINDOW_UPDATE
	peerInitWin    int64
	peerMaxFrame   uint32
	peerMaxStreams uint32
	peerTable      uint32
	settingsSeen   bool
	goAway         bool          // no new streams: GOAWAY received, or the connection failed
	err            error         // why the connection closed; set once
	slot           chan struct{} // closed and replaced when a stream ends or a setting changes
	ctlq           []ctlFrame    // frames for the write loop
	settingsTimer  *time.Timer   // fails the connection if the server's SETTINGS do not come

	ctlNotify chan struct{}
	done      chan struct{} // closed when the connection is
	closeOnce sync.Once
	wg        sync.WaitGroup // the read and write loops, and a drained connection's closer
}

// The receive windows: big enough that an xDS push of up to DefaultMaxRecvSize flows without
// waiting for the reader. The connection window is credited as data arrives, each stream's as
// its reader consumes it: a stream whose reader is slow holds at most its own window, and the
// others go on.
const (
	streamWindow   = 4 << 20
	connWindow     = 4 << 20
	maxHeaderBytes = 64 << 10 // SETTINGS_MAX_HEADER_LIST_SIZE we send, and what we accept
	maxHeaderBlock = 1 << 20  // the encoded HEADERS+CONTINUATION block we read before decoding
	maxCtlQueue    = 4096     // frames the server made us owe it that it does not read
	maxStreamID    = 1<<31 - 1
)

// settingsTimeout bounds the wait for the server's SETTINGS, its first frame: a server that is
// not HTTP/2 (or not there behind a proxy) fails the connection rather than hangs its calls.
var settingsTimeout = 20 * time.Second

// ctlFrame is a frame the read loop (or a stream's cancellation) leaves to the write loop.
type ctlFrame struct {
	typ     h2.FrameType
	flags   uint8
	sid     uint32
	payload []byte
}

var (
	// errUnusable is returned by open on a connection that takes no new streams.
	errUnusable = errors.New("the connection takes no new streams")
	// errAborted ends a stream its caller ended (context done, or the call over).
	errAborted = errors.New("stream ended by the client")
	// errServerDone is what Send meets once the server has ended its side.
	errServerDone = errors.New("the server ended the stream")
	// errDrained closes a connection after GOAWAY once its last stream is done.
	errDrained = errors.New("the server sent GOAWAY and the connection's streams are done")
)

// resetError is a stream the server reset with RST_STREAM, or that this client reset for what
// the server sent on it.
type resetError struct {
	code h2.ErrCode
	msg  string // what the server did wrong, when we reset it
}

func (e *resetError) Error() string {
	if e.msg != "" {
		return "stream reset (" + e.code.String() + "): " + e.msg
	}
	return "the server reset the stream with " + e.code.String()
}

// refusedError is a stream above the last stream id of the server's GOAWAY: the server did not
// process it, and a new connection may.
type refusedError struct {
	code  h2.ErrCode
	debug string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("the server sent GOAWAY (%v, %q) before processing the stream", e.code, e.debug)
}

// newTransport returns the client side of an HTTP/2 connection on nc; start starts it.
// forget is called once the connection has closed.
func newTransport(nc net.Conn, forget func(*transport)) *transport {
	t := &transport{
		nc:             nc,
		br:             bufio.NewReaderSize(nc, 32<<10),
		hdec:           hpack.NewDecoder(4096, nil),
		forget:         forget,
		bw:             bufio.NewWriterSize(nc, 32<<10),
		encTable:       4096,
		streams:        map[uint32]*h2stream{},
		nextID:         1,
		sendWin:        initialWindow,
		recvWin:        connWindow,
		peerInitWin:    initialWindow,
		peerMaxFrame:   defaultMaxFrame,
		peerMaxStreams: 1<<32 - 1, // unlimited until the server says otherwise
		peerTable:      4096,
		slot:           make(chan struct{}),
		ctlNotify:      make(chan struct{}, 1),
		done:           make(chan struct{}),
	}
	t.hdec.SetMaxStringLength(maxHeaderBytes)
	t.henc = hpack.NewEncoder(&t.hbuf)
	return t
}

// start writes the client preface and settings (within ctx's deadline) and starts the read
// and write loops.
func (t *transport) start(ctx context.Context) error {
	nc := t.nc
	if d, ok := ctx.Deadline(); ok {
		nc.SetWriteDeadline(d)
	}
	b := []byte(h2.ClientPreface)
	settings := []struct {
		id  h2.SettingID
		val uint32
	}{{h2.SettingEnablePush, 0}, {h2.SettingInitialWindowSize, streamWindow}, {h2.SettingMaxHeaderListSize, maxHeaderBytes}}
	b = h2.AppendFrameHeader(b, 6*len(settings), h2.FrameSettings, 0, 0)
	for _, s := range settings {
		b = binary.BigEndian.AppendUint16(b, uint16(s.id))
		b = binary.BigEndian.AppendUint32(b, s.val)
	}
	b = h2.AppendFrameHeader(b, 4, h2.FrameWindowUpdate, 0, 0)
	b = binary.BigEndian.AppendUint32(b, connWindow-initialWindow)
	if _, err := nc.Write(b); err != nil {
		return fmt.Errorf("writing the HTTP/2 preface: %w", err)
	}
	nc.SetWriteDeadline(time.Time{})

	wait := settingsTimeout
	t.mu.Lock()
	t.settingsTimer = time.AfterFunc(wait, func() {
		t.mu.Lock()
		seen := t.settingsSeen
		t.mu.Unlock()
		if !seen {
			t.closeWith(fmt.Errorf("the server sent no HTTP/2 SETTINGS within %v of connecting", wait))
		}
	})
	t.mu.Unlock()
	t.wg.Add(2)
	go t.readLoop()
	go t.writeLoop()
	return nil
}

// usable reports whether the connection takes new streams.
func (t *transport) usable() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err == nil && !t.goAway && t.nextID <= maxStreamID
}

// close closes the connection with err and waits for its goroutines.
func (t *transport) close(err error) {
	t.closeWith(err)
	t.wg.Wait()
}

// closeWith fails the connection with err, unless it has failed already, and closes it.
func (t *transport) closeWith(err error) {
	t.fail(err)
	t.closeOnce.Do(func() {
		close(t.done)
		t.nc.Close()
		t.forget(t)
	})
}

// fail records err as the connection's end and fails every open stream with it, unless the
// connection has failed already; it reports whether err is the first.
func (t *transport) fail(err error) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return false
	}
	t.err = err
	t.goAway = true
	for _, s := range t.streams {
		s.failLocked(err)
	}
	clear(t.streams)
	t.signalSlotLocked()
	if t.settingsTimer != nil {
		t.settingsTimer.Stop()
	}
	return true
}

// signalSlotLocked wakes the callers waiting in open for a stream slot.
func (t *transport) signalSlotLocked() {
	close(t.slot)
	t.slot = make(chan struct{})
}

// queueLocked hands f to the write loop.
func (t *transport) queueLocked(f ctlFrame) {
	if t.err != nil {
		return
	}
	t.ctlq = append(t.ctlq, f)
	select {
	case t.ctlNotify <- struct{}{}:
	default:
	}
}

func (t *transport) writeLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.done:
			return
		case <-t.ctlNotify:
		}
		// wmu first: a frame queued before a stream is opened is written before its HEADERS,
		// by this loop or by open.
		t.wmu.Lock()
		t.mu.Lock()
		q := t.ctlq
		t.ctlq = nil
		t.mu.Unlock()
		var err error
		for _, f := range q {
			if err = writeFrame(t.bw, f.typ, f.flags, f.sid, f.payload); err != nil {
				break
			}
		}
		if err == nil {
			err = t.bw.Flush()
		}
		t.wmu.Unlock()
		if err != nil {
			t.closeWith(fmt.Errorf("writing to the server: %w", err))
			return
		}
	}
}

// sendGoAway tells the server why the connection is being closed. A writer stuck on a server
// that does not read fails within a second, and so does this.
func (t *transport) sendGoAway(code h2.ErrCode, msg string) {
	t.nc.SetWriteDeadline(time.Now().Add(time.Second))
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if len(msg) > 256 {
		msg = msg[:256]
	}
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 8+len(msg)), 0) // no stream of the server's was processed
	p = binary.BigEndian.AppendUint32(p, uint32(code))
	p = append(p, msg...)
	if writeFrame(t.bw, h2.FrameGoAway, 0, 0, p) == nil {
		t.bw.Flush()
	}
}

// open starts a stream with the header fields, waiting for a slot while the server's
// SETTINGS_MAX_CONCURRENT_STREAMS are in use. It returns errUnusable if the connection takes
// no new streams.
func (t *transport) open(ctx context.Context, fields []hpack.HeaderField) (*h2stream, error) {
	for {
		t.wmu.Lock()
		t.mu.Lock()
		if t.err != nil || t.goAway || t.nextID > maxStreamID {
			t.mu.Unlock()
			t.wmu.Unlock()
			return nil, errUnusable
		}
		if uint32(len(t.streams)) >= t.peerMaxStreams {
			slot := t.slot
			t.mu.Unlock()
			t.wmu.Unlock()
			select {
			case <-slot:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		s := &h2stream{t: t, id: t.nextID, sendWin: t.peerInitWin, recvWin: streamWindow,
			recvCh: make(chan struct{}, 1), sendCh: make(chan struct{}, 1)}
		t.nextID += 2
		if t.nextID > maxStreamID {
			t.goAway = true // out of stream ids: closes once its streams are done
		}
		t.streams[s.id] = s
		maxFrame, table := t.peerMaxFrame, t.peerTable
		// The queued frames go first: the RST_STREAM of the stream whose end freed this slot
		// must reach the server before the new stream, or the server counts one too many.
		q := t.ctlq
		t.ctlq = nil
		t.mu.Unlock()
		var err error
		for _, f := range q {
			if err = writeFrame(t.bw, f.typ, f.flags, f.sid, f.payload); err != nil {
				break
			}
		}
		if err == nil {
			err = t.writeHeaders(s.id, fields, maxFrame, table)
		}
		if err == nil {
			err = t.bw.Flush()
		}
		t.wmu.Unlock()
		if err != nil {
			err = fmt.Errorf("writing to the server: %w", err)
			t.closeWith(err)
			return nil, err
		}
		return s, nil
	}
}

// writeHeaders encodes fields and writes them as HEADERS and CONTINUATION frames; wmu must be
// held.
func (t *transport) writeHeaders(sid uint32, fields []hpack.HeaderField, maxFrame, table uint32) error {
	if table != t.encTable {
		t.henc.SetMaxDynamicTableSizeLimit(table)
		t.encTable = table
	}
	t.hbuf.Reset()
	for _, f := range fields {
		if err := t.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := t.hbuf.Bytes()
	typ := h2.FrameHeaders
	for {
		n := min(len(block), int(maxFrame))
		var flags uint8
		if n == len(block) {
			flags = h2.FlagEndHeaders
		}
		if err := writeFrame(t.bw, typ, flags, sid, block[:n]); err != nil {
			return err
		}
		block = block[n:]
		if len(block) == 0 {
			return nil
		}
		typ = h2.FrameContinuation
	}
}

// removeLocked drops a stream that is over: no frame of it is sent or accepted any more.
func (t *transport) removeLocked(s *h2stream) {
	if t.streams[s.id] != s {
		return
	}
	delete(t.streams, s.id)
	t.signalSlotLocked()
	if t.goAway && len(t.streams) == 0 && t.err == nil {
		// Drained after GOAWAY. Closing may block on the TLS close alert: not under mu.
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.closeWith(errDrained)
		}()
	}
}

// idleLocked reports whether sid is a stream this client never opened.
func (t *transport) idleLocked(sid uint32) bool {
	return sid%2 == 0 || sid >= t.nextID
}

// creditConnLocked returns n received bytes of connection window to the server, in batches.
func (t *transport) creditConnLocked(n int64) {
	t.recvUnacked += n
	if t.recvUnacked >= connWindow/4 {
		t.queueLocked(ctlFrame{typ: h2.FrameWindowUpdate, payload: u32(uint32(t.recvUnacked))})
		t.recvWin += t.recvUnacked
		t.recvUnacked = 0
	}
}

// resetLocked fails s with a stream error of ours and tells the server with RST_STREAM.
func (t *transport) resetLocked(s *h2stream, code h2.ErrCode, msg string) {
	s.failLocked(&resetError{code: code, msg: msg})
	if t.streams[s.id] == s {
		t.queueLocked(ctlFrame{typ: h2.FrameRSTStream, sid: s.id, payload: u32(uint32(code))})
		t.removeLocked(s)
	}
}
