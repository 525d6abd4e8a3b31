// Package agentapi is the node-local API between the ambit-cni plugin and the cni-agent:
// on a Unix socket, one connection per call, the plugin writes one JSON request ending in a
// newline and the agent answers one JSON Response ending in a newline. The plugin asks the
// agent to enrol a pod during CNI ADD and to forget it during DEL; the agent decides from the
// pod's and namespace's labels.
//
// Not HTTP: the plugin is exec'd for every pod sandbox, and net/http with crypto/tls doubled
// its start-up (binary 6.5 MB; exec of VERSION 2.6 ms against 1.7 ms for a bare Go program).
package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/after"
)

// DefaultSocket is where the agent serves this API on the node.
const DefaultSocket = "/var/run/ambit/cni-agent.sock"

// Op is what the plugin asks of the agent for one pod.
type Op string

// The operations, one per CNI command that reaches the agent.
const (
	OpAdd   Op = "add"
	OpDel   Op = "del"
	OpCheck Op = "check"
)

// PodRequest describes the pod of one CNI call.
type PodRequest struct {
	ContainerID  string       `json:"containerID"`
	Netns        string       `json:"netns"`
	IfName       string       `json:"ifName"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	PodUID       string       `json:"podUID,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
}

// Response is the agent's answer. Error is empty on success; otherwise it is written for the
// user who reads the kubelet's event ("ztunnel not connected on node n1").
type Response struct {
	Enrolled bool   `json:"enrolled"`
	Error    string `json:"error,omitempty"`
}

// request is one call on the wire: the operation and the pod's fields in one JSON object.
type request struct {
	Op Op `json:"op"`
	PodRequest
}

// maxMessage bounds a request or an answer, newline included.
const maxMessage = 1 << 20

// ErrUnreachable is wrapped when the agent cannot be reached at all.
var ErrUnreachable = errors.New("cni-agent unreachable")

// Client calls the agent.
type Client struct {
	socket  string
	timeout time.Duration
}

// NewClient returns a client for the agent at socket; each call takes at most timeout (0: no
// limit but the call's context).
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{socket: socket, timeout: timeout}
}

// Call asks the agent to do op for req and returns its answer; an answer with an Error
// becomes an error with that text.
func (c *Client) Call(ctx context.Context, op Op, req PodRequest) (*Response, error) {
	b, err := json.Marshal(request{Op: op, PodRequest: req})
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w (is the Ambit cni-agent DaemonSet running on this node?)", ErrUnreachable, c.socket, err)
	}
	defer conn.Close()
	// ctx's end (its deadline too) ends the call at once; ctx.Err() is then set, so callErr
	// names it.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("sending the %s request to cni-agent at %s: %w", op, c.socket, callErr(ctx, err))
	}
	line, err := readMessage(bufio.NewReaderSize(conn, 512))
	if err != nil {
		return nil, fmt.Errorf("reading cni-agent's answer to %s for pod %s/%s: %w", op, req.PodNamespace, req.PodName, callErr(ctx, err))
	}
	var r Response
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("cni-agent answered %q: %w", line, err)
	}
	if r.Error != "" {
		return &r, errors.New(r.Error)
	}
	return &r, nil
}

// callErr names the context's end rather than the deadline the conn was given for it.
func callErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	return err
}

var errTooLong = fmt.Errorf("message longer than %d bytes", maxMessage)

// readMessage reads one message up to its newline. io.EOF means the peer closed the
// connection before sending anything; io.ErrUnexpectedEOF, in the middle of a message.
func readMessage(r *bufio.Reader) ([]byte, error) {
	var msg []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(msg)+len(chunk) > maxMessage {
			return nil, errTooLong
		}
		msg = append(msg, chunk...)
		switch {
		case err == nil:
			return msg, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(msg) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// Server answers the plugin's calls.
type Server struct {
	// Handle answers one request: its error becomes the Response's Error. What it (or
	// anything it calls) leaves with after.Reply runs once the answer has been sent and the
	// plugin has hung up and exited (see HangupWait). Its ctx ends when the plugin goes away
	// or the Server stops.
	Handle func(ctx context.Context, op Op, req PodRequest) (enrolled bool, err error)
	// ConnContext, if not nil, derives a call's context from its connection.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// HangupWait bounds how long the work left with after.Reply waits for the plugin to hang
	// up and exit once it has its answer; 0 means DefaultHangupWait.
	HangupWait time.Duration
}

// DefaultHangupWait is the Server's HangupWait when it sets none. The plugin hangs up as soon
// as it has read its answer and exits right after; the bound only matters for a plugin that
// does not.
const DefaultHangupWait = 100 * time.Millisecond

// Timeouts of the Server: reading a request (the plugin writes it at once), writing an
// answer, and letting calls in flight finish once Serve's ctx has ended.
const (
	readTimeout  = 10 * time.Second
	writeTimeout = 10 * time.Second
	drainTimeout = 5 * time.Second
)

// Serve answers calls on ln until ctx ends; then it closes ln, gives the calls in flight
// drainTimeout to finish, cancels the rest and returns once all have ended. It returns an
// error only if accepting fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Calls outlive ctx by up to drainTimeout: an ADD half done would be retried by the kubelet.
	calls, cancelCalls := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelCalls()
	var wg sync.WaitGroup
	stopped := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopped()
	var err error
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting CNI calls: %w", aerr)
				ln.Close()
			}
			break
		}
		wg.Go(func() { s.serveConn(calls, c) })
	}
	drained := make(chan struct{})
	go func() {
		wg.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		cancelCalls()
		<-drained
	}
	return err
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, c)
	}
	c.SetReadDeadline(time.Now().Add(readTimeout))
	// The plugin writes nothing after its request, so nothing is read ahead of it.
	line, err := readMessage(bufio.NewReaderSize(c, 4096))
	if errors.Is(err, io.EOF) {
		return
	}
	if err != nil {
		reply(c, Response{Error: fmt.Sprintf("reading request: %v", err)})
		return
	}
	if bytes.HasPrefix(line, []byte("POST /v1/cni/")) {
		replyHTTP(c)
		return
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		reply(c, Response{Error: fmt.Sprintf("decoding request: %v", err)})
		return
	}
	if req.Op != OpAdd && req.Op != OpDel && req.Op != OpCheck {
		reply(c, Response{Error: fmt.Sprintf("unknown operation %q; expected %s, %s or %s", req.Op, OpAdd, OpDel, OpCheck)})
		return
	}

	// The plugin gone (killed, or its own timeout) ends the call's context: a read returns
	// only then, or when c closes below.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.SetReadDeadline(time.Time{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		var b [1]byte
		c.Read(b[:])
		cancel()
	}()
	defer func() {
		c.Close()
		<-watched
	}()

	peer := PeerPID(c)
	q := &after.Queue{}
	enrolled, err := s.Handle(after.With(ctx, q), req.Op, req.PodRequest)
	r := Response{Enrolled: enrolled}
	if err != nil {
		r.Error = err.Error()
	}
	reply(c, r)
	// The work left for after the answer waits until the plugin hangs up, that is until it has
	// its answer and is exiting: the pod sandbox waits for the plugin's exit, and on a busy
	// node that work (the annotation's PATCH, the probe rule, the next eBPF programs) would take
	// the CPU the plugin needs to get there.
	wait := s.HangupWait
	if wait <= 0 {
		wait = DefaultHangupWait
	}
	deadline := time.Now().Add(wait)
	hangup := time.NewTimer(wait)
	select {
	case <-watched:
		// The runtime waits for the plugin's exit, which comes a little after its hang-up:
		// the work would compete with the plugin's last steps too.
		waitExit(peer, deadline)
	case <-hangup.C:
	}
	hangup.Stop()
	q.Run()
}

// PeerPID returns the PID of the process at the other end of the Unix connection c, as the
// caller's PID namespace sees it (SO_PEERCRED), or 0 if it is unknown.
func PeerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cred == nil {
		return 0
	}
	return int(cred.Pid)
}

// waitExit waits until process pid has exited, or until deadline. It does not wait for an
// unknown process (0), for this process (a caller in the same process, as in tests), or when
// the kernel cannot give a pidfd for it (gone already, or a kernel before 5.3).
func waitExit(pid int, deadline time.Time) {
	if pid <= 0 || pid == os.Getpid() {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	// A pidfd polls readable once its process has exited.
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			return
		}
	}
}

// reply sends the answer in one write, so the plugin has all of it and can return while
// the call goes on with what was left for after the reply.
func reply(c net.Conn, r Response) {
	b, _ := json.Marshal(r)
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	c.Write(append(b, '\n'))
}

// replyHTTP answers a plugin of the HTTP version of this API (installed by an older agent,
// until this agent replaces it) with an error it can show.
func replyHTTP(c net.Conn) {
	b, _ := json.Marshal(Response{Error: "the ambit-cni plugin on this node is older than its cni-agent; " +
		"the agent installs its own within 10 s and the kubelet retries"})
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	c.Write(append([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(b))+"\r\n\r\n"), b...))
}
