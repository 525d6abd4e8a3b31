// Package zds implements ZDS, the node-local protocol over which the CNI node agent hands
// enrolled pods' network namespaces to ztunnel (DESIGN.md section 5): a Unix SOCK_SEQPACKET
// socket carrying one protobuf message (api/zds's, encoded by hand in messages.go) per packet,
// with the pod's netns file descriptor passed as SCM_RIGHTS alongside AddWorkload. Server is
// the agent's side, RunClient ztunnel's.
package zds

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultPath is where the node agent listens and ztunnel connects.
const DefaultPath = "/var/run/ztunnel/ztunnel.sock"

const (
	// maxPacket bounds one message; real ones are a few hundred bytes.
	maxPacket = 64 << 10
	// maxFds is how many descriptors a packet may carry before it counts as malformed.
	maxFds = 4
)

// ErrMalformed is wrapped by every error about a packet that does not follow the protocol.
var ErrMalformed = errors.New("malformed ZDS packet")

// Listen makes the directory of path, removes a stale socket there and listens on it.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating ZDS socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale ZDS socket: %w", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening on ZDS socket: %w", err)
	}
	return ln, nil
}

// writePacket sends the encoded message b (a what) as one packet, with fd attached as
// SCM_RIGHTS when fd >= 0.
func writePacket(c *net.UnixConn, what string, b []byte, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("sending %s: %w", what, err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("sending %s: short write", what)
	}
	return nil
}

// readPacket reads one packet and the descriptors it carries. The caller owns the returned
// descriptors even when err is non-nil and reports a malformed packet (they are then closed).
func readPacket(c *net.UnixConn) ([]byte, []int, error) {
	buf := make([]byte, maxPacket)
	oob := make([]byte, unix.CmsgSpace(4*maxFds))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	fds, ferr := parseRights(oob[:oobn])
	switch {
	case ferr != nil:
		closeFds(fds)
		return nil, nil, ferr
	case flags&unix.MSG_TRUNC != 0:
		closeFds(fds)
		return nil, nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxPacket)
	case flags&unix.MSG_CTRUNC != 0:
		closeFds(fds)
		return nil, nil, fmt.Errorf("%w: more than %d file descriptors", ErrMalformed, maxFds)
	case n == 0 && oobn == 0:
		// A zero-length read on SOCK_SEQPACKET is the peer closing.
		return nil, nil, net.ErrClosed
	}
	return buf[:n], fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %w", ErrMalformed, err)
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("%w: SCM_RIGHTS: %w", ErrMalformed, err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
