// Package xds serves the resources of a store.Store to xDS clients over the delta Aggregated
// Discovery Service, each client the part it needs (see package store for the scoping). It
// knows nothing about Kubernetes.
package xds

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

// NodeNameKey is the node metadata field in which a client names the Kubernetes node it runs
// on (ztunnel sends it); the wildcard scope of a client depends on it.
const NodeNameKey = "NODE_NAME"

// Server is a delta ADS server over a Store.
type Server struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	store   *store.Store
	log     *slog.Logger
	streams atomic.Int64
	nonce   atomic.Uint64
	pushes  atomic.Uint64
}

// NewServer returns a Server for store; logger may be nil.
func NewServer(st *store.Store, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{store: st, log: logger}
}

// Register adds the server to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// Pushes returns how many responses the server has sent.
func (s *Server) Pushes() uint64 { return s.pushes.Load() }

// Streams returns how many clients are connected.
func (s *Server) Streams() int { return int(s.streams.Load()) }

// StreamAggregatedResources refuses state-of-the-world xDS: every Ambit client speaks delta.
func (s *Server) StreamAggregatedResources(grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
	return status.Error(codes.Unimplemented, "state-of-the-world ADS is not served: use DeltaAggregatedResources")
}

// subscription is one client's state for one type URL.
type subscription struct {
	wildcard bool
	names    map[string]struct{} // subscribed by name (or alias)
	// has maps each resource name the client holds to the version it holds, from what was
	// sent to it and what it declared when it (re)connected.
	has map[string]string
	// notFound are subscribed names already answered as not existing.
	notFound map[string]struct{}
}

// stream is one connected client.
type stream struct {
	srv  *Server
	grpc grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
	id   string
	node string
	log  *slog.Logger
	subs map[string]*subscription
}

// DeltaAggregatedResources serves one client until it disconnects.
func (s *Server) DeltaAggregatedResources(g grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	s.streams.Add(1)
	defer s.streams.Add(-1)
	ctx := g.Context()
	reqs := make(chan *discovery.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := g.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	st := &stream{srv: s, grpc: g, log: s.log, subs: map[string]*subscription{}}
	// changed is always taken before the views it guards are computed: a change that lands
	// while a push is being computed closes it, and the next loop pushes again.
	changed := s.store.Watch()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case req := <-reqs:
			if err := st.handle(req); err != nil {
				return err
			}
		case <-changed:
			changed = s.store.Watch()
			for typeURL := range st.subs {
				if err := st.push(typeURL, nil, false); err != nil {
					return err
				}
			}
		}
	}
}

// handle applies one request: the first names the client, every one may change the
// subscription or acknowledge a response.
func (st *stream) handle(req *discovery.DeltaDiscoveryRequest) error {
	if st.id == "" {
		st.id = req.GetNode().GetId()
		if f := req.GetNode().GetMetadata().GetFields()[NodeNameKey]; f != nil {
			st.node = f.GetStringValue()
		}
		st.log = st.srv.log.With("client", st.id, "node", st.node)
		st.log.Info("xds client connected")
	}
	typeURL := req.GetTypeUrl()
	if typeURL == "" {
		return status.Error(codes.InvalidArgument, "delta discovery request without type_url: set it to the resource type to subscribe to")
	}
	if req.GetResponseNonce() != "" {
		if detail := req.GetErrorDetail(); detail != nil {
			// A NACK: the client keeps what it had. Resending the same resources would be
			// refused again, so nothing is resent until they change.
			st.log.Warn("xds client rejected a response", "type", typeURL, "nonce", req.GetResponseNonce(), "error", detail.GetMessage())
		}
		if len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 {
			return nil
		}
	}
	sub := st.subs[typeURL]
	first := sub == nil
	if first {
		sub = &subscription{names: map[string]struct{}{}, has: map[string]string{}, notFound: map[string]struct{}{}}
		// Legacy wildcard: a first request that names nothing subscribes to everything.
		sub.wildcard = len(req.GetResourceNamesSubscribe()) == 0
		for name, version := range req.GetInitialResourceVersions() {
			sub.has[name] = version
		}
		st.subs[typeURL] = sub
	}
	var added []string
	for _, name := range req.GetResourceNamesSubscribe() {
		if name == "*" {
			sub.wildcard = true
			continue
		}
		if _, ok := sub.names[name]; !ok {
			sub.names[name] = struct{}{}
			added = append(added, name)
		}
	}
	for _, name := range req.GetResourceNamesUnsubscribe() {
		if name == "*" {
			sub.wildcard = false
			continue
		}
		delete(sub.names, name)
		delete(sub.notFound, name)
		// The client drops what it unsubscribed from; forget it so a later subscription
		// sends it again.
		if real, ok := st.srv.store.Resolve(typeURL, name); ok {
			delete(sub.has, real)
		}
		delete(sub.has, name)
	}
	return st.push(typeURL, added, first)
}

// push sends the client what changed in its view of typeURL. newNames are names subscribed by
// this request: those that do not exist are answered as removed, so an on-demand lookup ends.
// always sends a response even when nothing changed (the answer to a first request).
func (st *stream) push(typeURL string, newNames []string, always bool) error {
	sub := st.subs[typeURL]
	v := st.srv.store.View(typeURL, sub.wildcard, st.node, sub.names)
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL}
	names := make([]string, 0, len(v))
	for name := range v {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		e := v[name]
		if sub.has[name] == e.Version {
			continue
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: e.Version, Resource: e.Body, Aliases: e.Aliases})
		sub.has[name] = e.Version
	}
	for name := range sub.has {
		if _, ok := v[name]; !ok {
			resp.RemovedResources = append(resp.RemovedResources, name)
			delete(sub.has, name)
		}
	}
	for _, name := range newNames {
		if _, ok := st.srv.store.Resolve(typeURL, name); !ok {
			if _, done := sub.notFound[name]; !done && !slices.Contains(resp.RemovedResources, name) {
				resp.RemovedResources = append(resp.RemovedResources, name)
				sub.notFound[name] = struct{}{}
			}
		}
	}
	slices.Sort(resp.RemovedResources)
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 && !always {
		return nil
	}
	resp.Nonce = strconv.FormatUint(st.srv.nonce.Add(1), 36)
	if err := st.grpc.Send(resp); err != nil {
		return fmt.Errorf("sending %s to %s: %w", typeURL, st.id, err)
	}
	st.srv.pushes.Add(1)
	st.log.Debug("xds push", "type", typeURL, "resources", len(resp.Resources), "removed", len(resp.RemovedResources), "nonce", resp.Nonce)
	return nil
}
