package hbone

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/tcpio"
)

// The TLS 1.3 record layer (RFC 8446 section 5) of an HBONE connection.
//
// crypto/tls does the handshake; recordConn then protects the records itself. With
// crypto/tls, every record was copied twice on the way out (into its record buffer, then into
// the buffer that gathered a flush's records for one write) and once on the way in (from its
// decrypted record into the caller's buffer), and the socket was read a record at a time. In a
// bulk transfer those copies were 6-10% of each ztunnel's CPU. recordConn reads the socket in
// 64 KiB chunks, decrypts a record straight into the caller's buffer whenever the buffer has
// room for all of it (else in place, then copies) and seals each record in place in the buffer
// the flush writes out, so the plaintext is copied once on the way out and, as a rule, not at
// all on the way in.
//
// The traffic secrets come from crypto/tls's key log (Config.KeyLogWriter), kept in memory
// and never written anywhere. During the handshake crypto/tls reads through hsConn, which
// hands it whole records and never more than the record it asks for, so every record after
// the handshake is recordConn's. After the handshake recordConn handles what TLS 1.3 may
// send: application data, alerts (close_notify is EOF), KeyUpdate (both directions; it
// updates its own keys well before AES-GCM's per-key limit) and NewSessionTicket (ignored:
// HBONE does not resume sessions).

const (
	recordHeaderLen = 5
	maxPlaintext    = 1 << 14            // RFC 8446 section 5.1
	maxCiphertext   = maxPlaintext + 256 // RFC 8446 section 5.2
	gcmTagLen       = 16
	rawBufSize      = 64 << 10 // ciphertext read buffer: several full records
	maxHandshakeMsg = 64 << 10 // the largest post-handshake message we accept
	maxIdleRecords  = 64       // records in a row that carry no application data
	defaultKeyLimit = 1 << 24  // records sealed under one key before we send a KeyUpdate
)

// Content types, post-handshake message types and alerts (RFC 8446 sections 5.1, 4 and 6).
const (
	recordTypeCCS   = 20
	recordTypeAlert = 21
	recordTypeHS    = 22
	recordTypeData  = 23

	hsNewTicket = 4
	hsKeyUpdate = 24

	alertCloseNotify    = 0
	alertUnexpected     = 10
	alertBadRecordMAC   = 20
	alertRecordOverflow = 22
	alertDecodeError    = 50
)

// batchMax bounds what a batch of records holds before it is written out early, so a large
// frame does not leave a large buffer behind.
const batchMax = 256 << 10

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

// recordError is a protocol violation by the peer: the alert to send and what went wrong.
type recordError struct {
	alert uint8
	msg   string
}

func (e recordError) Error() string { return "tls: " + e.msg }

// trafficKeys protects one direction: the AEAD, the IV, the record sequence number and the
// traffic secret the next KeyUpdate derives from.
type trafficKeys struct {
	hash   func() hash.Hash
	keyLen int
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
	nonce  [12]byte
}

func newTrafficKeys(h func() hash.Hash, keyLen int, secret []byte) (*trafficKeys, error) {
	k := &trafficKeys{hash: h, keyLen: keyLen}
	return k, k.set(secret)
}

// set derives the key and IV from secret (RFC 8446 section 7.3) and restarts the sequence.
func (k *trafficKeys) set(secret []byte) error {
	key, err := expandLabel(k.hash, secret, "key", k.keyLen)
	if err != nil {
		return err
	}
	iv, err := expandLabel(k.hash, secret, "iv", len(k.iv))
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	k.secret, k.aead, k.seq = secret, aead, 0
	copy(k.iv[:], iv)
	return nil
}

// update moves to the next generation of traffic secret (RFC 8446 section 7.2).
func (k *trafficKeys) update() error {
	next, err := expandLabel(k.hash, k.secret, "traffic upd", k.hash().Size())
	if err != nil {
		return err
	}
	return k.set(next)
}

// nextNonce returns the per-record nonce (the IV xor the sequence number) and advances the
// sequence.
func (k *trafficKeys) nextNonce() []byte {
	k.nonce = k.iv
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], k.seq)
	for i, b := range seq {
		k.nonce[4+i] ^= b
	}
	k.seq++
	return k.nonce[:]
}

// expandLabel is HKDF-Expand-Label with an empty context (RFC 8446 section 7.1).
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// keyLog receives crypto/tls's key log lines and keeps the application traffic secrets.
type keyLog struct {
	client, server []byte
}

func (k *keyLog) Write(line []byte) (int, error) {
	f := bytes.Fields(line)
	if len(f) != 3 {
		return len(line), nil
	}
	var dst *[]byte
	switch string(f[0]) {
	case "CLIENT_TRAFFIC_SECRET_0":
		dst = &k.client
	case "SERVER_TRAFFIC_SECRET_0":
		dst = &k.server
	default:
		return len(line), nil
	}
	s, err := hex.AppendDecode(nil, f[2])
	if err != nil {
		return 0, fmt.Errorf("key log line %q: %w", f[0], err)
	}
	*dst = s
	return len(line), nil
}

// recordConn is a TLS 1.3 connection after crypto/tls's handshake (see above). Read and
// Write are safe to call concurrently with each other; begin and end bracket a batch of
// writes that leave the socket in one write.
type recordConn struct {
	net.Conn // the socket

	keyLimit uint64 // records sealed under one key before we update it

	rmu     sync.Mutex // rmu guards the read side below
	in      *trafficKeys
	raw     []byte // raw[rr:rw]: ciphertext read from the socket, not yet processed
	rr, rw  int
	pending []byte // decrypted data the caller's buffer could not take; points into raw
	hs      []byte // a post-handshake message split over records
	hsLeft  int    // during the handshake: bytes of the current record not yet given to crypto/tls
	idle    int    // records in a row without application data
	rerr    error  // sticky read error

	// peerAsked: the peer asked for a KeyUpdate; we send one before our next record. The
	// read side sets it without wmu.
	peerAsked atomic.Bool

	wmu      sync.Mutex // wmu guards the write side below
	out      *trafficKeys
	wbuf     []byte // sealed records not yet written
	batching bool
	werr     error // sticky write error; net.ErrClosed once an alert went out
}

func newRecordConn(nc net.Conn) *recordConn {
	return &recordConn{Conn: nc, raw: make([]byte, rawBufSize), keyLimit: defaultKeyLimit}
}

// handshake runs crypto/tls's handshake on nc, as the client or the server with cfg, checks
// that the peer agreed to h2, and returns the record layer that carries the connection from
// then on. It closes nc when it fails.
func handshake(ctx context.Context, nc net.Conn, cfg *tls.Config, client bool) (*recordConn, error) {
	rc := newRecordConn(fastConn(nc))
	var secrets keyLog
	cfg.KeyLogWriter = &secrets
	tc := tls.Server(hsConn{rc}, cfg)
	if client {
		tc = tls.Client(hsConn{rc}, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("peer negotiated ALPN %q, want h2", cs.NegotiatedProtocol)
	}
	if err := rc.install(cs, &secrets, client); err != nil {
		nc.Close()
		return nil, err
	}
	return rc, nil
}

// install takes over from crypto/tls once its handshake is done: it derives both
// directions' keys from the secrets the key log caught.
func (rc *recordConn) install(cs tls.ConnectionState, kl *keyLog, client bool) error {
	var h func() hash.Hash
	var keyLen int
	switch cs.CipherSuite {
	case tls.TLS_AES_128_GCM_SHA256:
		h, keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h, keyLen = sha512.New384, 32
	default:
		return fmt.Errorf("tls: cipher suite %s has no record layer here", tls.CipherSuiteName(cs.CipherSuite))
	}
	if kl.client == nil || kl.server == nil {
		return errors.New("tls: crypto/tls logged no application traffic secrets")
	}
	if rc.hsLeft != 0 {
		return errors.New("tls: handshake ended inside a record")
	}
	readSecret, writeSecret := kl.client, kl.server
	if client {
		readSecret, writeSecret = kl.server, kl.client
	}
	var err error
	if rc.in, err = newTrafficKeys(h, keyLen, readSecret); err != nil {
		return err
	}
	rc.out, err = newTrafficKeys(h, keyLen, writeSecret)
	return err
}

// hsConn gives crypto/tls the socket during the handshake, reading through recordConn's
// buffer one record at a time.
type hsConn struct{ rc *recordConn }

func (h hsConn) Read(p []byte) (int, error) {
	rc := h.rc
	rc.rmu.Lock()
	defer rc.rmu.Unlock()
	for {
		avail := rc.rw - rc.rr
		if rc.hsLeft == 0 && avail >= recordHeaderLen {
			rc.hsLeft = recordHeaderLen + int(binary.BigEndian.Uint16(rc.raw[rc.rr+3:]))
		}
		if rc.hsLeft > 0 && avail > 0 {
			n := copy(p, rc.raw[rc.rr:rc.rr+min(avail, rc.hsLeft)])
			rc.rr += n
			rc.hsLeft -= n
			return n, nil
		}
		if err := rc.fill(); err != nil {
			return 0, err
		}
	}
}

func (h hsConn) Write(p []byte) (int, error)        { return h.rc.Conn.Write(p) }
func (h hsConn) Close() error                       { return h.rc.Conn.Close() }
func (h hsConn) LocalAddr() net.Addr                { return h.rc.Conn.LocalAddr() }
func (h hsConn) RemoteAddr() net.Addr               { return h.rc.Conn.RemoteAddr() }
func (h hsConn) SetDeadline(t time.Time) error      { return h.rc.Conn.SetDeadline(t) }
func (h hsConn) SetReadDeadline(t time.Time) error  { return h.rc.Conn.SetReadDeadline(t) }
func (h hsConn) SetWriteDeadline(t time.Time) error { return h.rc.Conn.SetWriteDeadline(t) }

// fill reads more ciphertext from the socket, first moving a partial record to the front
// when the buffer could not hold the rest of it. rmu must be held and pending empty.
func (rc *recordConn) fill() error {
	if rc.rr == rc.rw {
		rc.rr, rc.rw = 0, 0
	} else if len(rc.raw)-rc.rr < recordHeaderLen+maxCiphertext {
		rc.rw = copy(rc.raw, rc.raw[rc.rr:rc.rw])
		rc.rr = 0
	}
	n, err := rc.Conn.Read(rc.raw[rc.rw:])
	rc.rw += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	if errors.Is(err, io.EOF) && rc.rw > rc.rr {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Read returns application data, decrypting records straight into p when it can hold them.
func (rc *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rc.rmu.Lock()
	defer rc.rmu.Unlock()
	for {
		if len(rc.pending) > 0 {
			n := copy(p, rc.pending)
			rc.pending = rc.pending[n:]
			return n, nil
		}
		if rc.rerr != nil {
			return 0, rc.rerr
		}
		n, err := rc.readRecords(p)
		if err == nil {
			if n > 0 {
				return n, nil
			}
			if len(rc.pending) > 0 {
				continue
			}
			err = rc.fill()
			if err == nil {
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, err // a deadline: the caller may read again
			}
		}
		var re recordError
		if errors.As(err, &re) {
			rc.sendAlert(re.alert)
		}
		rc.rerr = err
		if n > 0 {
			return n, nil // the error comes with the next Read
		}
		return 0, err
	}
}

// readRecords processes the complete records in raw: application data goes into p while p
// can take a whole record, and into pending (decrypted in place) once it cannot. It returns
// how much of p it filled; with n == 0, no pending data and no error it needs more ciphertext.
func (rc *recordConn) readRecords(p []byte) (n int, err error) {
	for rc.rw-rc.rr >= recordHeaderLen {
		hdr := rc.raw[rc.rr : rc.rr+recordHeaderLen]
		size := int(binary.BigEndian.Uint16(hdr[3:]))
		switch {
		case hdr[0] == recordTypeCCS:
			return n, recordError{alertUnexpected, "change_cipher_spec record after the handshake"}
		case hdr[0] != recordTypeData:
			return n, recordError{alertUnexpected, fmt.Sprintf("unprotected record of type %d after the handshake", hdr[0])}
		case size > maxCiphertext:
			return n, recordError{alertRecordOverflow, fmt.Sprintf("record of %d bytes, over the limit of %d", size, maxCiphertext)}
		case size <= gcmTagLen:
			return n, recordError{alertDecodeError, fmt.Sprintf("record of %d bytes is too short to be protected", size)}
		}
		if rc.rw-rc.rr < recordHeaderLen+size {
			return n, nil
		}
		ct := rc.raw[rc.rr+recordHeaderLen : rc.rr+recordHeaderLen+size]
		direct := len(p)-n >= size-gcmTagLen
		if !direct && n > 0 {
			return n, nil // the caller gets what it has; this record waits for the next Read
		}
		var pt []byte
		if direct {
			pt, err = rc.in.aead.Open(p[n:n], rc.in.nextNonce(), ct, hdr)
		} else {
			pt, err = rc.in.aead.Open(ct[:0], rc.in.nextNonce(), ct, hdr)
		}
		if err != nil {
			return n, recordError{alertBadRecordMAC, "record failed authentication (bad record MAC)"}
		}
		rc.rr += recordHeaderLen + size
		i := len(pt) - 1
		for i >= 0 && pt[i] == 0 {
			i--
		}
		if i < 0 {
			return n, recordError{alertUnexpected, "protected record with no content type"}
		}
		typ, content := pt[i], pt[:i]
		if len(content) > maxPlaintext {
			return n, recordError{alertRecordOverflow, fmt.Sprintf("record plaintext of %d bytes, over the limit of %d", len(content), maxPlaintext)}
		}
		if typ != recordTypeData || len(content) == 0 {
			if rc.idle++; rc.idle > maxIdleRecords {
				return n, recordError{alertUnexpected, fmt.Sprintf("%d records in a row without application data", rc.idle)}
			}
		}
		switch typ {
		case recordTypeData:
			if len(rc.hs) > 0 {
				return n, recordError{alertUnexpected, "application data inside a split handshake message"}
			}
			if len(content) > 0 {
				rc.idle = 0
			}
			if !direct {
				rc.pending = content
				return n, nil
			}
			n += len(content)
		case recordTypeHS:
			if err := rc.handshakeMessages(content); err != nil {
				return n, err
			}
		case recordTypeAlert:
			return n, rc.alert(content)
		default:
			return n, recordError{alertUnexpected, fmt.Sprintf("protected record of unknown type %d", typ)}
		}
	}
	return n, nil
}

// handshakeMessages handles the post-handshake messages in one record's content.
func (rc *recordConn) handshakeMessages(b []byte) error {
	if len(b) == 0 {
		return recordError{alertUnexpected, "empty handshake record"}
	}
	rc.hs = append(rc.hs, b...)
	for len(rc.hs) >= 4 {
		size := int(rc.hs[1])<<16 | int(rc.hs[2])<<8 | int(rc.hs[3])
		if size > maxHandshakeMsg {
			return recordError{alertUnexpected, fmt.Sprintf("post-handshake message of %d bytes, over the limit of %d", size, maxHandshakeMsg)}
		}
		if len(rc.hs) < 4+size {
			return nil
		}
		typ, body := rc.hs[0], rc.hs[4:4+size]
		rest := rc.hs[4+size:]
		switch typ {
		case hsNewTicket:
			// Nothing to keep: HBONE never resumes a session.
		case hsKeyUpdate:
			if size != 1 || body[0] > 1 {
				return recordError{alertDecodeError, "malformed KeyUpdate"}
			}
			if len(rest) > 0 {
				// A key change must end the record (RFC 8446 section 5.1).
				return recordError{alertUnexpected, "KeyUpdate not at the end of its record"}
			}
			if err := rc.in.update(); err != nil {
				return err
			}
			if body[0] == 1 {
				rc.peerAsked.Store(true)
			}
		default:
			return recordError{alertUnexpected, fmt.Sprintf("unexpected post-handshake message of type %d", typ)}
		}
		rc.hs = rest
	}
	if len(rc.hs) == 0 {
		rc.hs = nil
	}
	return nil
}

// alert handles a received alert: close_notify ends the stream, anything else is the peer's
// error.
func (rc *recordConn) alert(b []byte) error {
	if len(b) != 2 {
		return recordError{alertDecodeError, "malformed alert"}
	}
	if b[1] == alertCloseNotify {
		return io.EOF
	}
	return fmt.Errorf("tls: peer sent alert %d (level %d)", b[1], b[0])
}

// Write seals p into records and, outside a batch, writes them.
func (rc *recordConn) Write(p []byte) (int, error) {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	if rc.werr != nil {
		return 0, rc.werr
	}
	written := 0
	for len(p) > 0 {
		m := min(len(p), maxPlaintext)
		if err := rc.sealLocked(recordTypeData, p[:m]); err != nil {
			return written, err
		}
		p = p[m:]
		written += m
		if !rc.batching || len(rc.wbuf) >= batchMax {
			if err := rc.flushLocked(); err != nil {
				return written, err
			}
		}
	}
	if !rc.batching {
		return written, rc.flushLocked()
	}
	return written, nil
}

// begin opens a batch: records written until end leave the socket in one write.
func (rc *recordConn) begin() {
	rc.wmu.Lock()
	rc.batching = true
	rc.wmu.Unlock()
}

// end closes the batch and writes what it gathered.
func (rc *recordConn) end() error {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	rc.batching = false
	return rc.flushLocked()
}

// sealLocked appends one protected record of type typ carrying data to wbuf, first updating
// our keys if the peer asked for it or the current key has sealed keyLimit records.
func (rc *recordConn) sealLocked(typ byte, data []byte) error {
	if rc.peerAsked.Swap(false) || rc.out.seq >= rc.keyLimit {
		if err := rc.keyUpdateLocked(false); err != nil {
			return err
		}
	}
	return rc.appendRecordLocked(typ, data)
}

// keyUpdateLocked sends a KeyUpdate and moves our sending keys on; request asks the peer
// to update its own.
func (rc *recordConn) keyUpdateLocked(request bool) error {
	msg := []byte{hsKeyUpdate, 0, 0, 1, 0}
	if request {
		msg[4] = 1
	}
	if err := rc.appendRecordLocked(recordTypeHS, msg); err != nil {
		return err
	}
	if err := rc.out.update(); err != nil {
		rc.werr = err
		return err
	}
	return nil
}

func (rc *recordConn) appendRecordLocked(typ byte, data []byte) error {
	size := len(data) + 1 + gcmTagLen
	off := len(rc.wbuf)
	rc.wbuf = slices.Grow(rc.wbuf, recordHeaderLen+size)
	rc.wbuf = append(rc.wbuf, recordTypeData, 3, 3, byte(size>>8), byte(size))
	rc.wbuf = append(rc.wbuf, data...)
	rc.wbuf = append(rc.wbuf, typ)
	pt := rc.wbuf[off+recordHeaderLen:]
	rc.out.aead.Seal(pt[:0], rc.out.nextNonce(), pt, rc.wbuf[off:off+recordHeaderLen])
	rc.wbuf = rc.wbuf[:off+recordHeaderLen+size]
	return nil
}

func (rc *recordConn) flushLocked() error {
	if len(rc.wbuf) == 0 {
		return nil
	}
	_, err := rc.Conn.Write(rc.wbuf)
	rc.wbuf = rc.wbuf[:0]
	if cap(rc.wbuf) > batchMax+recordHeaderLen+maxCiphertext {
		rc.wbuf = nil // a one-off large write does not keep its buffer
	}
	if err != nil {
		rc.werr = err
	}
	return err
}

// sendAlert tells the peer why we are closing, if the write side is free and working; it
// never waits behind a writer.
func (rc *recordConn) sendAlert(desc uint8) {
	if !rc.wmu.TryLock() {
		return
	}
	defer rc.wmu.Unlock()
	if rc.werr != nil || rc.out == nil {
		return
	}
	rc.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	level := byte(2) // fatal
	if desc == alertCloseNotify {
		level = 1
	}
	if rc.appendRecordLocked(recordTypeAlert, []byte{level, desc}) == nil {
		rc.flushLocked()
	}
	rc.werr = net.ErrClosed
}

// Close sends close_notify (unless a write is in progress: Close then only breaks it) and
// closes the socket.
func (rc *recordConn) Close() error {
	rc.sendAlert(alertCloseNotify)
	return rc.Conn.Close()
}
