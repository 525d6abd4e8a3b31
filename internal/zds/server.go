package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNotConnected is wrapped by Server.Add when no ztunnel is connected to take the pod.
var ErrNotConnected = errors.New("ztunnel not connected")

// DefaultAckTimeout is how long the server waits for ztunnel to ack one request.
const DefaultAckTimeout = 10 * time.Second

// helloTimeout bounds the wait for a new connection's ZdsHello.
const helloTimeout = 5 * time.Second

// Workload is one enrolled pod as the server keeps it.
type Workload struct {
	UID  string
	Info *WorkloadInfo
	// Netns is the pod's network namespace; the server owns it after Add. nil when the agent
	// cannot open it (a pod found running after the agent restarted): such a pod is replayed
	// as KeepWorkload, and Add sends nothing for it.
	Netns *os.File
}

// Server is the node agent's side of ZDS. It keeps the set of enrolled pods, replays it to
// every ztunnel that connects (then SnapshotSent), sends later adds to the newest connection
// and deletes to all of them, and waits for each Ack.
type Server struct {
	log        *slog.Logger
	ackTimeout time.Duration

	// opMu serializes requests (Add, Del and each connection's replay): each connection sees
	// them one at a time and in order, and no replay misses a concurrent Add. It guards the
	// fields below.
	opMu      sync.Mutex
	workloads map[string]*Workload
	conns     []*serverConn // connections past their replay, oldest first

	ready atomic.Int32 // live connections in conns, readable without opMu
}

// NewServer returns a Server; ackTimeout <= 0 means DefaultAckTimeout. log may be nil.
func NewServer(log *slog.Logger, ackTimeout time.Duration) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ackTimeout <= 0 {
		ackTimeout = DefaultAckTimeout
	}
	return &Server{log: log, ackTimeout: ackTimeout, workloads: map[string]*Workload{}}
}

// Connected reports whether a ztunnel is connected and has received its replay.
func (s *Server) Connected() bool { return s.ready.Load() > 0 }

// UIDs returns the enrolled pods' UIDs, sorted.
func (s *Server) UIDs() []string {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	uids := make([]string, 0, len(s.workloads))
	for uid := range s.workloads {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// Add records w as enrolled (replayed on every later connect) and, when it has a netns,
// sends it to the newest ztunnel connection and returns that ztunnel's answer: nil, its Ack
// error, an error wrapping ErrNotConnected, or a timeout. The pod stays recorded even on
// error; call Del to forget it. Adding a UID again replaces the record.
func (s *Server) Add(ctx context.Context, w Workload) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if old := s.workloads[w.UID]; old != nil && old.Netns != nil && old.Netns != w.Netns {
		old.Netns.Close()
	}
	s.workloads[w.UID] = &w
	if w.Netns == nil {
		return nil
	}
	sc := s.newest()
	if sc == nil {
		return fmt.Errorf("adding pod %s: %w", w.UID, ErrNotConnected)
	}
	if err := sc.request(ctx, addRequest(&w), int(w.Netns.Fd()), s.ackTimeout); err != nil {
		return fmt.Errorf("adding pod %s: %w", w.UID, err)
	}
	return nil
}

// Del forgets a pod and tells every connected ztunnel to drop it; it returns their errors.
// With no ztunnel connected there is nobody to tell, which is not an error.
func (s *Server) Del(ctx context.Context, uid string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if w := s.workloads[uid]; w != nil && w.Netns != nil {
		w.Netns.Close()
	}
	delete(s.workloads, uid)
	req := &Request{Kind: RequestDel, UID: uid}
	var errs []error
	for _, sc := range s.conns {
		if !sc.live() {
			continue
		}
		if err := sc.request(ctx, req, -1, s.ackTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting pod %s: %w", uid, err)
	}
	return nil
}

// Close releases the netns files of every recorded pod. Call it after Serve returned.
func (s *Server) Close() error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for uid, w := range s.workloads {
		if w.Netns != nil {
			w.Netns.Close()
		}
		delete(s.workloads, uid)
	}
	return nil
}

// Serve accepts ztunnel connections on ln until ctx ends, then closes ln and every
// connection and returns nil; it returns an accept error otherwise.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			ln.Close()
			return fmt.Errorf("accepting ZDS connection: %w", err)
		}
		wg.Go(func() { s.serveConn(ctx, c) })
	}
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	log := s.log.With("conn", fmt.Sprintf("%p", c))

	c.SetReadDeadline(time.Now().Add(helloTimeout))
	b, fds, err := readPacket(c)
	closeFds(fds)
	if err == nil {
		err = DecodeHello(b)
	}
	if err != nil {
		log.Warn("ztunnel connection closed: no valid hello", "err", err)
		return
	}
	c.SetReadDeadline(time.Time{})

	sc := &serverConn{c: c, acks: make(chan string, 1), done: make(chan struct{}), log: log}
	var wg sync.WaitGroup
	wg.Go(func() { sc.readAcks(s) })
	defer wg.Wait()

	if err := s.replay(ctx, sc); err != nil {
		log.Warn("ztunnel connection closed: replay failed", "err", err)
		c.Close()
		return
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
	}
	c.Close()
	<-sc.done
	s.opMu.Lock()
	s.conns = slices.DeleteFunc(s.conns, func(x *serverConn) bool { return x == sc })
	s.opMu.Unlock()
	log.Info("ztunnel disconnected", "err", sc.err)
}

// replay sends every recorded pod and SnapshotSent, then makes sc the newest connection.
func (s *Server) replay(ctx context.Context, sc *serverConn) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	uids := make([]string, 0, len(s.workloads))
	for uid := range s.workloads {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	for _, uid := range uids {
		w := s.workloads[uid]
		req, fd := addRequest(w), -1
		if w.Netns != nil {
			fd = int(w.Netns.Fd())
		} else {
			req = &Request{Kind: RequestKeep, UID: uid}
		}
		if err := sc.request(ctx, req, fd, s.ackTimeout); err != nil {
			// ztunnel refused one pod: say so, and keep replaying the others.
			if !sc.live() {
				return fmt.Errorf("replaying pod %s: %w", uid, err)
			}
			sc.log.Warn("ztunnel refused a replayed pod", "uid", uid, "err", err)
		}
	}
	snap := &Request{Kind: RequestSnapshotSent}
	if err := sc.request(ctx, snap, -1, s.ackTimeout); err != nil {
		return fmt.Errorf("sending SnapshotSent: %w", err)
	}
	s.conns = append(s.conns, sc)
	if sc.listed.CompareAndSwap(false, true) {
		s.ready.Add(1)
	}
	// The reader may have ended in between; it could not uncount what was not counted yet.
	if !sc.live() && sc.listed.CompareAndSwap(true, false) {
		s.ready.Add(-1)
	}
	sc.log.Info("ztunnel connected", "pods", len(uids))
	return nil
}

// newest returns the newest live connection, or nil. opMu must be held.
func (s *Server) newest() *serverConn {
	for i := len(s.conns) - 1; i >= 0; i-- {
		if s.conns[i].live() {
			return s.conns[i]
		}
	}
	return nil
}

func addRequest(w *Workload) *Request {
	return &Request{Kind: RequestAdd, UID: w.UID, Info: w.Info}
}

// serverConn is one ztunnel connection after its hello.
type serverConn struct {
	c    *net.UnixConn
	log  *slog.Logger
	acks chan string   // Ack errors, filled by readAcks, one outstanding request at a time
	done chan struct{} // closed when readAcks ends; err is set before
	err  error
	// listed is whether this connection is counted in Server.ready.
	listed atomic.Bool
}

func (sc *serverConn) live() bool {
	select {
	case <-sc.done:
		return false
	default:
		return true
	}
}

// readAcks reads every packet from ztunnel until the connection ends.
func (sc *serverConn) readAcks(s *Server) {
	// done closes before the connection is uncounted, so replay either sees it closed or
	// has counted the connection in time for this to uncount it.
	defer func() {
		if sc.listed.CompareAndSwap(true, false) {
			s.ready.Add(-1)
		}
	}()
	defer close(sc.done)
	for {
		b, fds, err := readPacket(sc.c)
		closeFds(fds)
		var ack string
		if err == nil {
			ack, err = DecodeResponse(b)
		}
		if err != nil {
			sc.err = err
			sc.c.Close()
			return
		}
		select {
		case sc.acks <- ack:
		default:
			sc.err = fmt.Errorf("%w: Ack without a request", ErrMalformed)
			sc.c.Close()
			return
		}
	}
}

// request sends one request and waits for its Ack. A connection that does not answer in time
// is closed: a late Ack would otherwise answer the next request.
func (sc *serverConn) request(ctx context.Context, req *Request, fd int, timeout time.Duration) error {
	if err := writePacket(sc.c, req.Kind.String(), req.Marshal(), fd); err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case ack := <-sc.acks:
		if ack != "" {
			return fmt.Errorf("ztunnel refused: %s", ack)
		}
		return nil
	case <-sc.done:
		return fmt.Errorf("ztunnel connection closed before its Ack: %w", sc.err)
	case <-t.C:
		sc.c.Close()
		return fmt.Errorf("ztunnel did not ack within %s", timeout)
	case <-ctx.Done():
		sc.c.Close()
		return fmt.Errorf("waiting for ztunnel's Ack: %w", ctx.Err())
	}
}
