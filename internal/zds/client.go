package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// Handler is ztunnel's side of ZDS: RunClient calls it for every request from the agent,
// one at a time, and acks the request with the error it returns.
type Handler interface {
	// Connected starts a connection: the agent's replay follows, ended by SnapshotSent. An
	// error ends the connection (RunClient reconnects).
	Connected(ctx context.Context) error
	// AddWorkload starts proxying a pod; the handler owns netns from then on (also on error).
	AddWorkload(ctx context.Context, uid string, info *WorkloadInfo, netns *netns.Handle) error
	// KeepWorkload keeps a pod ztunnel already proxies (sent during the replay after a connect).
	KeepWorkload(ctx context.Context, uid string) error
	// DelWorkload stops proxying a pod.
	DelWorkload(ctx context.Context, uid string) error
	// SnapshotSent ends the replay: drop pods not added or kept since the connect.
	SnapshotSent(ctx context.Context) error
}

// Backoff between reconnects: it doubles from minBackoff to maxBackoff and starts over after
// a connection that said hello.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// RunClient connects to the agent at path, says hello, serves requests (acking each with h's
// error) and reconnects with backoff until ctx ends; it then returns nil.
func RunClient(ctx context.Context, path string, h Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := minBackoff
	for {
		helloSent, err := serveOnce(ctx, path, h)
		if ctx.Err() != nil {
			return nil
		}
		if helloSent {
			backoff = minBackoff
			log.Warn("ZDS connection to node agent ended; reconnecting", "path", path, "err", err)
		} else {
			log.Debug("cannot connect to node agent", "path", path, "err", err, "retry_in", backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// serveOnce runs one connection. helloSent says whether it got as far as the hello.
func serveOnce(ctx context.Context, path string, h Handler) (helloSent bool, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return false, fmt.Errorf("connecting to ZDS socket: %w", err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	if err := h.Connected(ctx); err != nil {
		return false, fmt.Errorf("starting a ZDS connection: %w", err)
	}
	if err := writePacket(c, "ZdsHello", marshalHello(), -1); err != nil {
		return false, err
	}
	for {
		b, fds, err := readPacket(c)
		var reply string
		switch {
		case errors.Is(err, ErrMalformed):
			reply = err.Error()
		case err != nil:
			return true, fmt.Errorf("reading from node agent: %w", err)
		default:
			reply = errString(handle(ctx, h, b, fds))
		}
		if err := writePacket(c, "Ack", marshalAck(reply), -1); err != nil {
			return true, err
		}
	}
}

// handle decodes one request and passes it to h. It owns fds.
func handle(ctx context.Context, h Handler, b []byte, fds []int) error {
	req, err := DecodeRequest(b)
	if err != nil {
		closeFds(fds)
		return err
	}
	if req.Kind == RequestAdd {
		if len(fds) != 1 {
			closeFds(fds)
			return fmt.Errorf("%w: AddWorkload %s carries %d file descriptors; expected its netns", ErrMalformed, req.UID, len(fds))
		}
		if err := checkNetns(fds[0]); err != nil {
			unix.Close(fds[0])
			return fmt.Errorf("AddWorkload %s: %w", req.UID, err)
		}
		return h.AddWorkload(ctx, req.UID, req.Info, netns.FromFd(fds[0], "netns-"+req.UID))
	}
	closeFds(fds)
	if len(fds) > 0 {
		return fmt.Errorf("%w: only AddWorkload carries a file descriptor", ErrMalformed)
	}
	switch req.Kind {
	case RequestKeep:
		return h.KeepWorkload(ctx, req.UID)
	case RequestDel:
		return h.DelWorkload(ctx, req.UID)
	default: // SnapshotSent; DecodeRequest admits nothing else
		return h.SnapshotSent(ctx)
	}
}

// checkNetns checks that fd is a network namespace.
func checkNetns(fd int) error {
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("%w: the file descriptor is not a namespace: %w", ErrMalformed, err)
	}
	if typ != unix.CLONE_NEWNET {
		return fmt.Errorf("%w: the file descriptor is a namespace of type %#x, not a network namespace", ErrMalformed, typ)
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
