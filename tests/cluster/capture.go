package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records every frame that crosses the cluster fabric (between machines), as a pcap
// file readable by tcpdump or tshark. Traffic between pods of one node does not cross the
// fabric and is not seen.
type Capture struct {
	fd   int
	path string
	f    *os.File
	wg   sync.WaitGroup
	stop atomic.Bool

	mu   sync.Mutex // guards data
	data bytes.Buffer
}

// CaptureFabric starts capturing on every port of the fabric bridge. Stop ends it.
func (c *Cluster) CaptureFabric(path string) (*Capture, error) {
	var fd int
	err := c.fabric.ns.Do(func() error {
		var err error
		// ETH_P_ALL in network byte order, on all interfaces of the fabric namespace: the
		// bridge's ports see each frame that crosses from one machine to another.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening capture socket in the fabric: %w", err)
	}
	// A read timeout lets the reader notice Stop.
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting capture timeout: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating capture file: %w", err)
	}
	// pcap global header: magic, version 2.4, zone 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET.
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("writing capture file: %w", err)
	}
	cp := &Capture{fd: fd, path: path, f: f}
	cp.wg.Add(1)
	go cp.read()
	return cp, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (cp *Capture) read() {
	defer cp.wg.Done()
	buf := make([]byte, 65536)
	rec := make([]byte, 16)
	for !cp.stop.Load() {
		n, _, err := unix.Recvfrom(cp.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		now := time.Now()
		binary.LittleEndian.PutUint32(rec[0:], uint32(now.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(now.Nanosecond()/1000))
		binary.LittleEndian.PutUint32(rec[8:], uint32(n))
		binary.LittleEndian.PutUint32(rec[12:], uint32(n))
		cp.mu.Lock()
		cp.data.Write(buf[:n])
		cp.f.Write(rec)
		cp.f.Write(buf[:n])
		cp.mu.Unlock()
	}
}

// Stop ends the capture and returns the path of the pcap file.
func (cp *Capture) Stop() (string, error) {
	// The reader wakes at least every 100 ms (the socket's read timeout) and sees the flag;
	// the descriptor is closed only after, so the reader never reads a reused number.
	cp.stop.Store(true)
	cp.wg.Wait()
	err := unix.Close(cp.fd)
	if cerr := cp.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cp.path, fmt.Errorf("closing capture: %w", err)
	}
	return cp.path, nil
}

// Contains reports whether any captured frame so far contains b (for example a marker
// string sent as payload: found means it crossed the fabric in clear text).
func (cp *Capture) Contains(b []byte) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return bytes.Contains(cp.data.Bytes(), b)
}

// Bytes counts the bytes captured so far, to check that the capture saw traffic at all.
func (cp *Capture) Bytes() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.data.Len()
}
