// Package zds implements ZDS, the node-local protocol over which the CNI node agent hands
// enrolled pods' network namespaces to ztunnel (DESIGN.md section 5): a Unix SOCK_SEQPACKET
// socket carrying one protobuf message (api/zds) per packet, with the pod's netns file
// descriptor passed as SCM_RIGHTS alongside AddWorkload. Server is the agent's side, RunClient
// ztunnel's.
package zds

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	zdspb "github.com/ambit-mesh/ambit/api/zds"
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

// writePacket sends m as one packet, with fd attached as SCM_RIGHTS when fd >= 0.
func writePacket(c *net.UnixConn, m proto.Message, fd int) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", m, err)
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("sending %T: %w", m, err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("sending %T: short write", m)
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

// DecodeRequest parses and checks one message from the agent.
func DecodeRequest(b []byte) (*zdspb.WorkloadRequest, error) {
	var m zdspb.WorkloadRequest
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: decoding WorkloadRequest: %w", ErrMalformed, err)
	}
	switch p := m.Payload.(type) {
	case *zdspb.WorkloadRequest_Add:
		if p.Add == nil || p.Add.Uid == "" {
			return nil, fmt.Errorf("%w: AddWorkload without a uid", ErrMalformed)
		}
	case *zdspb.WorkloadRequest_Keep:
		if p.Keep == nil || p.Keep.Uid == "" {
			return nil, fmt.Errorf("%w: KeepWorkload without a uid", ErrMalformed)
		}
	case *zdspb.WorkloadRequest_Del:
		if p.Del == nil || p.Del.Uid == "" {
			return nil, fmt.Errorf("%w: DelWorkload without a uid", ErrMalformed)
		}
	case *zdspb.WorkloadRequest_SnapshotSent:
	default:
		return nil, fmt.Errorf("%w: WorkloadRequest without a known payload", ErrMalformed)
	}
	return &m, nil
}

// DecodeResponse parses and checks one message from ztunnel after its hello.
func DecodeResponse(b []byte) (*zdspb.Ack, error) {
	var m zdspb.WorkloadResponse
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: decoding WorkloadResponse: %w", ErrMalformed, err)
	}
	ack := m.GetAck()
	if ack == nil {
		return nil, fmt.Errorf("%w: WorkloadResponse without an Ack", ErrMalformed)
	}
	return ack, nil
}

// DecodeHello parses and checks ztunnel's first message.
func DecodeHello(b []byte) (*zdspb.ZdsHello, error) {
	var m zdspb.ZdsHello
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: decoding ZdsHello: %w", ErrMalformed, err)
	}
	if m.Version != zdspb.Version_V1 {
		return nil, fmt.Errorf("%w: ZdsHello version %s; expected V1", ErrMalformed, m.Version)
	}
	return &m, nil
}
