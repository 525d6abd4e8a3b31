package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/grpcwire"
)

// Resource is one decoded resource of a response.
type Resource struct {
	// Name is the resource's name: a workload UID, a Service key, or an Authorization key.
	Name    string
	Version string
	// Aliases are the other names it may be looked up by ("<network>/<ip>").
	Aliases []string
	// Exactly one of the fields below is set: Workload or Service for an Address resource,
	// Authorization for an Authorization resource.
	Workload      *apiwire.Workload
	Service       *apiwire.Service
	Authorization *apiwire.Authorization
}

// Sink receives what the server sends. Update is called from one goroutine at a time, in the
// order of the responses; Lookup returns only after Update has applied the answer.
type Sink interface {
	// Update applies one response of typeURL: set replaces resources by name, removed names
	// resources that are gone (a name may be one the sink never had). An error refuses the
	// response (NACK) with its message; the sink should then keep what it could apply.
	Update(typeURL string, set []Resource, removed []string) error
}

// ErrClosed is returned by Lookup after Run has returned.
var ErrClosed = errors.New("xds client stopped")

// Client is a delta ADS client. Create it with New, run it with Run.
type Client struct {
	cfg  Config
	sink Sink

	// mu guards the fields below.
	mu sync.Mutex
	// versions holds, per type, the version of every resource applied, for
	// initial_resource_versions on reconnect.
	versions map[string]map[string]string
	// aliases maps an address alias to the Address resource name holding it; aliasesOf the
	// reverse.
	aliases   map[string]string
	aliasesOf map[string][]string
	// names are the Address names subscribed to by Lookup, with their state.
	names map[string]*lookup
	// stream is the current stream once its initial requests are sent; nil otherwise.
	stream  *stream
	synced  map[string]bool
	closed  bool
	syncedc chan struct{} // closed once both types had a first response

	connects int // how many streams were established, for tests and status
	// probes are outstanding sync probes (see Subscribe), closed when the server removes them.
	probes   map[string]chan struct{}
	probeSeq uint64
	// awaitFirst is set until the first Address response of the current stream: it answers
	// every name the stream's first request subscribed to.
	awaitFirst bool
}

// lookup is one name subscribed on demand.
type lookup struct {
	answered bool          // the server answered since it was subscribed
	done     chan struct{} // closed when answered
}

type stream struct {
	mu sync.Mutex // serializes Send
	s  *grpcwire.Stream
}

func (s *stream) send(r *apiwire.DeltaRequest) error {
	b := r.Marshal()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.s.Send(b)
}

func (s *stream) recv() (*apiwire.DeltaResponse, error) {
	b, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	resp, err := apiwire.DecodeDeltaResponse(b)
	if err != nil {
		return nil, fmt.Errorf("decoding xds response: %w", err)
	}
	return resp, nil
}

// New returns a Client that hands updates to sink.
func New(cfg Config, sink Sink) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("creating xds client: no Address; set istiod-lite's host:port, e.g. istiod.istio-system.svc:15012")
	}
	if sink == nil {
		return nil, errors.New("creating xds client: no Sink")
	}
	return &Client{
		cfg:       cfg.withDefaults(),
		sink:      sink,
		versions:  map[string]map[string]string{AddressType: {}, AuthorizationType: {}},
		aliases:   map[string]string{},
		aliasesOf: map[string][]string{},
		names:     map[string]*lookup{},
		probes:    map[string]chan struct{}{},
		synced:    map[string]bool{},
		syncedc:   make(chan struct{}),
	}, nil
}

// Synced returns a channel closed once the first response of each type has been applied.
func (c *Client) Synced() <-chan struct{} { return c.syncedc }

// Connects returns how many streams have been established so far.
func (c *Client) Connects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connects
}

// Run connects and serves streams, reconnecting with backoff, until ctx ends. It returns nil
// when ctx ends, or an error if the configuration cannot be used.
func (c *Client) Run(ctx context.Context) error {
	defer func() {
		c.mu.Lock()
		c.closed = true
		c.stream = nil
		for _, l := range c.names {
			if !l.answered {
				l.answered = true
				close(l.done)
			}
		}
		c.mu.Unlock()
	}()
	conn, err := c.cfg.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	backoff := c.cfg.InitialBackoff
	for {
		healthy, err := c.serve(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		if healthy {
			backoff = c.cfg.InitialBackoff
		}
		// Full jitter in [backoff/2, backoff): reconnecting ztunnels do not arrive together.
		wait := backoff/2 + rand.N(backoff/2+1)
		c.cfg.Logger.Warn("xds stream ended; reconnecting", "address", c.cfg.Address, "error", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// serve runs one stream until it fails. healthy reports that it got at least one response.
func (c *Client) serve(ctx context.Context, conn *grpcwire.Conn) (healthy bool, err error) {
	token, err := c.cfg.token()
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var md grpcwire.Metadata
	if token != "" {
		md = grpcwire.Metadata{"authorization": "Bearer " + token}
	}
	s, err := conn.NewStream(sctx, deltaADSMethod, md)
	if err != nil {
		return false, fmt.Errorf("opening xds stream: %w", err)
	}
	st := &stream{s: s}
	if err := c.start(st); err != nil {
		return false, err
	}
	defer func() {
		c.mu.Lock()
		if c.stream == st {
			c.stream = nil
		}
		c.mu.Unlock()
	}()
	c.cfg.Logger.Info("xds stream open", "address", c.cfg.Address, "node", c.cfg.NodeName)
	for {
		resp, err := st.recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("server closed the stream")
			} else if ctx.Err() != nil {
				err = ctx.Err()
			}
			return healthy, fmt.Errorf("receiving from xds: %w", err)
		}
		healthy = true
		if err := st.send(c.handle(resp)); err != nil {
			return healthy, fmt.Errorf("acknowledging xds response: %w", err)
		}
	}
}

// start sends the first request of each type: a wildcard subscription, the on-demand names,
// and the versions held. c.mu is held throughout, so a Lookup either is in the snapshot or
// sends its subscription on the published stream after these.
func (c *Client) start(st *stream) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, typeURL := range []string{AddressType, AuthorizationType} {
		req := &apiwire.DeltaRequest{
			Node:                    c.cfg.node(),
			TypeURL:                 typeURL,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: cloneVersions(c.versions[typeURL]),
		}
		if typeURL == AddressType {
			names := make([]string, 0, len(c.names))
			for n := range c.names {
				names = append(names, n)
			}
			sort.Strings(names)
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, names...)
		}
		if err := st.send(req); err != nil {
			return fmt.Errorf("subscribing to %s: %w", typeURL, err)
		}
	}
	c.stream = st
	c.connects++
	c.awaitFirst = true
	return nil
}

func cloneVersions(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// handle decodes and applies one response and returns its ACK or NACK.
func (c *Client) handle(resp *apiwire.DeltaResponse) *apiwire.DeltaRequest {
	typeURL := resp.TypeURL
	ack := &apiwire.DeltaRequest{TypeURL: typeURL, ResponseNonce: resp.Nonce}
	var problems []string
	set := make([]Resource, 0, len(resp.Resources))
	for _, r := range resp.Resources {
		res, err := decode(typeURL, r.Body)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", r.Name, err))
			continue
		}
		res.Name, res.Version, res.Aliases = r.Name, r.Version, r.Aliases
		set = append(set, res)
	}
	if typeURL != AddressType && typeURL != AuthorizationType {
		problems = append(problems, fmt.Sprintf("type %s is not one this client subscribes to", typeURL))
		set = nil
	}
	removed := make([]string, 0, len(resp.RemovedResources))
	for _, name := range resp.RemovedResources {
		if !strings.HasPrefix(name, probePrefix) {
			removed = append(removed, name)
		}
	}
	var sinkErr error
	if c.versions[typeURL] != nil && (len(set) > 0 || len(removed) > 0) {
		sinkErr = c.sink.Update(typeURL, set, removed)
	}
	if sinkErr != nil {
		problems = append(problems, sinkErr.Error())
	}
	c.record(typeURL, set, resp.RemovedResources, sinkErr == nil)
	if len(problems) > 0 {
		msg := fmt.Sprintf("refused %d resource(s) of %s: %s", len(problems), typeURL, joinLimited(problems))
		c.cfg.Logger.Warn("xds response refused", "type", typeURL, "nonce", resp.Nonce, "error", msg)
		ack.ErrorDetail = &apiwire.Status{Code: int32(grpcwire.InvalidArgument), Message: msg}
	}
	return ack
}

func joinLimited(ps []string) string {
	const max = 10
	out := ""
	for i, p := range ps {
		if i == max {
			return out + fmt.Sprintf("; and %d more", len(ps)-max)
		}
		if i > 0 {
			out += "; "
		}
		out += p
	}
	return out
}

// decode decodes a resource's body into the Resource field of its type.
func decode(typeURL string, a *apiwire.Any) (Resource, error) {
	var r Resource
	if a == nil {
		return r, errors.New("no resource body")
	}
	if a.TypeURL != typeURL {
		return r, fmt.Errorf("body is a %s, want %s", a.TypeURL, typeURL)
	}
	var err error
	switch typeURL {
	case AddressType:
		r.Workload, r.Service, err = apiwire.DecodeAddress(a.Value)
		if err == nil && r.Workload == nil && r.Service == nil {
			return r, errors.New("address is neither a workload nor a service")
		}
	case AuthorizationType:
		r.Authorization, err = apiwire.DecodeAuthorization(a.Value)
	default:
		return r, fmt.Errorf("unknown type %s", typeURL)
	}
	if err != nil {
		return r, fmt.Errorf("decoding: %w", err)
	}
	return r, nil
}

// record notes what was applied (versions only when the sink accepted them, so a refused
// resource is sent again after a reconnect) and answers the lookups it resolves.
func (c *Client) record(typeURL string, set []Resource, removed []string, accepted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	vs := c.versions[typeURL]
	if vs == nil {
		return
	}
	for _, name := range removed {
		delete(vs, name)
		if typeURL == AddressType {
			c.dropAliases(name)
		}
	}
	for _, r := range set {
		if accepted {
			vs[r.Name] = r.Version
		}
		if typeURL == AddressType {
			c.dropAliases(r.Name)
			for _, a := range r.Aliases {
				c.aliases[a] = r.Name
			}
			c.aliasesOf[r.Name] = r.Aliases
		}
	}
	if typeURL == AddressType {
		if c.awaitFirst {
			c.awaitFirst = false
			for name := range c.names {
				c.answer(name)
			}
		}
		for _, name := range removed {
			c.answer(name)
			if p := c.probes[name]; p != nil {
				close(p)
				delete(c.probes, name)
			}
		}
		for _, r := range set {
			c.answer(r.Name)
			for _, a := range r.Aliases {
				c.answer(a)
			}
		}
	}
	if !c.synced[typeURL] {
		c.synced[typeURL] = true
		if c.synced[AddressType] && c.synced[AuthorizationType] {
			close(c.syncedc)
		}
	}
}

func (c *Client) dropAliases(name string) {
	for _, a := range c.aliasesOf[name] {
		if c.aliases[a] == name {
			delete(c.aliases, a)
		}
	}
	delete(c.aliasesOf, name)
}

func (c *Client) answer(name string) {
	if l := c.names[name]; l != nil && !l.answered {
		l.answered = true
		close(l.done)
	}
}

// known reports whether name (a resource name or alias) resolves to an Address held.
func (c *Client) known(name string) bool {
	if _, ok := c.versions[AddressType][name]; ok {
		return true
	}
	_, ok := c.aliases[name]
	return ok
}

// Lookup returns whether an Address is known by name (a workload UID, a Service key, or an
// alias "<network>/<ip>"): at once when the client holds it, else after asking the server (see
// Subscribe).
func (c *Client) Lookup(ctx context.Context, name string) (found bool, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, ErrClosed
	}
	if c.known(name) {
		c.mu.Unlock()
		return true, nil
	}
	c.mu.Unlock()
	return c.Subscribe(ctx, name)
}

// Subscribe subscribes to an Address by name, even one the client holds already (a Service
// subscribed by name brings the workloads behind it), and waits until the server has answered:
// found reports whether the resource exists (and has been applied to the Sink, with what it
// brings). The name stays subscribed, across reconnects: a second call is answered at once from
// what the client holds. It returns ctx's error when ctx ends first, and ErrClosed once Run has
// returned.
func (c *Client) Subscribe(ctx context.Context, name string) (found bool, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, ErrClosed
	}
	l := c.names[name]
	if l != nil && l.answered {
		defer c.mu.Unlock()
		return c.known(name), nil
	}
	if l == nil {
		l = &lookup{done: make(chan struct{})}
		c.names[name] = l
	}
	// Without a stream, the next stream's first request carries the name and its first
	// response answers it. On a stream, a probe (a name that cannot exist) goes with it: the
	// server answers the probe with a removal in the same response that brings what the name
	// adds, and sends nothing for a name whose resources the client holds already.
	st := c.stream
	var probe string
	var probed chan struct{}
	if st != nil {
		c.probeSeq++
		probe = fmt.Sprintf("%s%d", probePrefix, c.probeSeq)
		probed = make(chan struct{})
		c.probes[probe] = probed
	}
	c.mu.Unlock()
	if st != nil {
		// A failed send ends the stream; the next one subscribes again.
		_ = st.send(&apiwire.DeltaRequest{TypeURL: AddressType, ResourceNamesSubscribe: []string{name, probe}})
		defer func() {
			c.mu.Lock()
			delete(c.probes, probe)
			c.mu.Unlock()
			_ = st.send(&apiwire.DeltaRequest{TypeURL: AddressType, ResourceNamesUnsubscribe: []string{probe}})
		}()
	}
	select {
	case <-l.done:
	case <-probed: // nil without a stream: never ready
	case <-ctx.Done():
		return false, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answer(name)
	if c.closed && !c.known(name) {
		return false, ErrClosed
	}
	return c.known(name), nil
}

// deltaADSMethod is Envoy's delta ADS method, api/discovery's DeltaAggregatedResourcesMethod
// (importing it would link the protobuf runtime).
const deltaADSMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// probePrefix starts the names of probes: no workload UID, Service key or alias has this form.
const probePrefix = "ambit.ztunnel/sync-probe/"
