package state

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

func uid(ns, name string) string { return "Kubernetes//Pod/" + ns + "/" + name }

// resource makes the xds.Resource the client hands over for a generated Address or
// Authorization: encoded, then decoded by apiwire. A message that does not decode gives a
// Resource with no body, which Update refuses.
func resource(name string, m proto.Message, aliases ...string) xds.Resource {
	r := xds.Resource{Name: name, Aliases: aliases}
	b, err := proto.Marshal(m)
	if err != nil {
		return r
	}
	switch m.(type) {
	case *workload.Address:
		r.Workload, r.Service, _ = apiwire.DecodeAddress(b)
	case *security.Authorization:
		r.Authorization, _ = apiwire.DecodeAuthorization(b)
	}
	return r
}

type wlOpt func(*workload.Workload)

func healthy(w *workload.Workload)   { w.Status = workload.WorkloadStatus_HEALTHY }
func unhealthy(w *workload.Workload) { w.Status = workload.WorkloadStatus_UNHEALTHY }
func backs(key string, ports ...uint32) wlOpt {
	return func(w *workload.Workload) {
		if w.Services == nil {
			w.Services = map[string]*workload.PortList{}
		}
		pl := &workload.PortList{}
		for i := 0; i+1 < len(ports); i += 2 {
			pl.Ports = append(pl.Ports, &workload.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
		}
		w.Services[key] = pl
	}
}
func policies(keys ...string) wlOpt {
	return func(w *workload.Workload) { w.AuthorizationPolicies = keys }
}

func wl(ns, name, ip string, opts ...wlOpt) xds.Resource {
	w := &workload.Workload{Uid: uid(ns, name), Name: name, Namespace: ns, ServiceAccount: "sa-" + name, TrustDomain: "cluster.local",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: workload.TunnelProtocol_HBONE}
	for _, o := range opts {
		o(w)
	}
	return resource(w.Uid, &workload.Address{Type: &workload.Address_Workload{Workload: w}}, "/"+ip)
}

func svc(ns, name, vip string, ports ...uint32) xds.Resource {
	host := name + "." + ns + ".svc.cluster.local"
	s := &workload.Service{Name: name, Namespace: ns, Hostname: host,
		Addresses: []*workload.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}}}
	for i := 0; i+1 < len(ports); i += 2 {
		s.Ports = append(s.Ports, &workload.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	return resource(ns+"/"+host, &workload.Address{Type: &workload.Address_Service{Service: s}}, "/"+vip)
}

func pol(ns, name string, scope security.Scope, action security.Action, m *security.Match) xds.Resource {
	return resource(ns+"/"+name, &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{m}}}}}})
}

func mustUpdate(t *testing.T, s *State, typ string, set []xds.Resource, removed ...string) {
	t.Helper()
	if err := s.Update(typ, set, removed); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// fakeLookuper answers lookups from a table of what the "server" has, applying it to the State
// as the xDS client would.
type fakeLookuper struct {
	t       *testing.T
	s       *State
	mu      sync.Mutex
	remote  map[string][]xds.Resource // name -> resources the answer brings
	block   bool                      // never answer
	lookups []string
}

func (f *fakeLookuper) answer(ctx context.Context, name string) (bool, error) {
	f.mu.Lock()
	f.lookups = append(f.lookups, name)
	res, ok := f.remote[name]
	block := f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return false, ctx.Err()
	}
	if !ok {
		return false, f.s.Update(xds.AddressType, nil, []string{name})
	}
	return true, f.s.Update(xds.AddressType, res, nil)
}

func (f *fakeLookuper) Lookup(ctx context.Context, name string) (bool, error) {
	return f.answer(ctx, name)
}
func (f *fakeLookuper) Subscribe(ctx context.Context, name string) (bool, error) {
	return f.answer(ctx, name)
}

func TestWorkloadsByAddrAndName(t *testing.T) {
	s := New(Config{})
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", healthy), wl("shop", "db-1", "10.1.0.6")})
	w, ok := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.5"))
	if !ok || w.Name != "web-1" || !w.Healthy || !w.HBONE || w.Identity() != "spiffe://cluster.local/ns/shop/sa/sa-web-1" {
		t.Fatalf("WorkloadByAddr(10.1.0.5): got %+v, %v", w, ok)
	}
	if w, ok := s.WorkloadByAddr("", netip.MustParseAddr("::ffff:10.1.0.6")); !ok || w.Name != "db-1" {
		t.Errorf("WorkloadByAddr of an IPv4-mapped address: got %v, %v", w, ok)
	}
	if _, ok := s.WorkloadByAddr("other-net", netip.MustParseAddr("10.1.0.5")); ok {
		t.Errorf("WorkloadByAddr in another network: found one")
	}
	if w, ok := s.LocalWorkload("shop", "db-1"); !ok || w.UID != uid("shop", "db-1") {
		t.Errorf("LocalWorkload(shop, db-1): got %v, %v", w, ok)
	}
	// The pod gets a new IP: the old one is released.
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.9")})
	if _, ok := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.5")); ok {
		t.Errorf("old address still maps to a workload")
	}
	// A new pod gets db-1's address before db-1's removal arrives: it wins, and keeps it.
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "db-2", "10.1.0.6")})
	if w, _ := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.6")); w.Name != "db-2" {
		t.Errorf("reused address: got %s, want the newer db-2", w.Name)
	}
	mustUpdate(t, s, xds.AddressType, nil, uid("shop", "db-1"))
	if w, ok := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.6")); !ok || w.Name != "db-2" {
		t.Errorf("reused address after the old pod's removal: got %v, %v, want db-2", w, ok)
	}
	mustUpdate(t, s, xds.AddressType, nil, uid("shop", "web-1"), "/10.7.7.7")
	if _, ok := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.9")); ok {
		t.Errorf("removed workload still found")
	}
}

func TestFindWorkloadOnDemand(t *testing.T) {
	s := New(Config{LookupTimeout: 100 * time.Millisecond})
	remote := wl("shop", "far", "10.2.0.8", healthy)
	f := &fakeLookuper{t: t, s: s, remote: map[string][]xds.Resource{"/10.2.0.8": {remote}}}
	ctx := context.Background()
	if _, err := s.FindWorkload(ctx, "", netip.MustParseAddr("10.2.0.8")); !errors.Is(err, ErrNotFound) {
		t.Errorf("without a lookuper: got %v, want ErrNotFound", err)
	}
	s.SetLookuper(f)
	w, err := s.FindWorkload(ctx, "", netip.MustParseAddr("10.2.0.8"))
	if err != nil || w.Name != "far" {
		t.Fatalf("FindWorkload of a remote workload: got %v, %v", w, err)
	}
	if _, err := s.FindWorkload(ctx, "", netip.MustParseAddr("10.2.0.8")); err != nil || len(f.lookups) != 1 {
		t.Errorf("second FindWorkload: err %v, lookups %v; want it answered locally", err, f.lookups)
	}
	if _, err := s.FindWorkload(ctx, "", netip.MustParseAddr("10.9.9.9")); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindWorkload of an unknown IP: got %v, want ErrNotFound", err)
	}
	f.block = true
	start := time.Now()
	if _, err := s.FindWorkload(ctx, "", netip.MustParseAddr("10.9.9.10")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("FindWorkload without an answer: got %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("FindWorkload waited %v, want about LookupTimeout", d)
	}
}

func TestServicesAndEndpoints(t *testing.T) {
	s := New(Config{})
	key := "shop/web.shop.svc.cluster.local"
	mustUpdate(t, s, xds.AddressType, []xds.Resource{
		svc("shop", "web", "10.96.0.10", 80, 8080, 9090, 0, 7070, 0),
		wl("shop", "web-1", "10.1.0.5", healthy, backs(key, 80, 8080, 9090, 0)),
		wl("shop", "web-2", "10.1.0.6", unhealthy, backs(key, 80, 8080, 9090, 0)),
	})
	f := &fakeLookuper{t: t, s: s, remote: map[string][]xds.Resource{
		key: {wl("shop", "web-3", "10.2.0.7", healthy, backs(key, 80, 8081, 7070, 7171))},
	}}
	s.SetLookuper(f)
	ctx := context.Background()

	sv, port, ok := s.ServiceByVIP("", netip.MustParseAddr("10.96.0.10"), 80)
	if !ok || sv.Key != key || port.TargetPort != 8080 {
		t.Fatalf("ServiceByVIP: got %v %v %v", sv, port, ok)
	}
	if _, _, ok := s.ServiceByVIP("", netip.MustParseAddr("10.96.0.10"), 81); ok {
		t.Errorf("ServiceByVIP of a port the service lacks: ok")
	}
	if !s.IsServiceVIP("", netip.MustParseAddr("10.96.0.10")) || s.IsServiceVIP("", netip.MustParseAddr("10.1.0.5")) {
		t.Errorf("IsServiceVIP wrong")
	}
	if got := s.ServicesByHostname("web.shop.svc.cluster.local"); len(got) != 1 || got[0].VIPs[0].Addr != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("ServicesByHostname: got %v", got)
	}

	eps, err := s.Endpoints(ctx, sv)
	if err != nil || len(eps) != 3 {
		t.Fatalf("Endpoints: got %d, %v; want 3 (two local, one brought by the subscription)", len(eps), err)
	}
	if _, err := s.Endpoints(ctx, sv); err != nil || len(f.lookups) != 1 {
		t.Errorf("second Endpoints: lookups %v, want one subscription only", f.lookups)
	}
	tests := []struct {
		port  uint16
		wants map[string]bool // acceptable endpoints
	}{
		{80, map[string]bool{"10.1.0.5:8080": true, "10.2.0.7:8081": true}},
		{9090, map[string]bool{"10.1.0.5:9090": true}}, // target 0: same port
		{7070, map[string]bool{"10.2.0.7:7171": true}}, // the workload's own target port
	}
	for _, tt := range tests {
		seen := map[string]bool{}
		for range 200 {
			ep, err := s.PickEndpoint(ctx, sv, tt.port)
			if err != nil {
				t.Fatalf("PickEndpoint(%d): %v", tt.port, err)
			}
			if !tt.wants[ep.Addr.String()] {
				t.Fatalf("PickEndpoint(%d): got %v, want one of %v (never the unhealthy web-2)", tt.port, ep.Addr, tt.wants)
			}
			seen[ep.Addr.String()] = true
		}
		if len(seen) != len(tt.wants) {
			t.Errorf("PickEndpoint(%d) over 200 picks: saw %v, want all of %v", tt.port, seen, tt.wants)
		}
	}
	if _, err := s.PickEndpoint(ctx, sv, 81); !errors.Is(err, ErrNoHealthyEndpoint) {
		t.Errorf("PickEndpoint of an unknown port: got %v", err)
	}
	mustUpdate(t, s, xds.AddressType, nil, uid("shop", "web-1"), uid("shop", "web-3"))
	if _, err := s.PickEndpoint(ctx, sv, 80); !errors.Is(err, ErrNoHealthyEndpoint) {
		t.Errorf("PickEndpoint with only an unhealthy endpoint: got %v", err)
	}
	mustUpdate(t, s, xds.AddressType, nil, key)
	if _, _, ok := s.ServiceByVIP("", netip.MustParseAddr("10.96.0.10"), 80); ok || len(s.ServicesByHostname("web.shop.svc.cluster.local")) != 0 {
		t.Errorf("removed service still found")
	}
}

func TestPoliciesAndChanges(t *testing.T) {
	s := New(Config{})
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", healthy)})
	dst, _ := s.LocalWorkload("shop", "web-1")
	c := &authz.Conn{Source: netip.MustParseAddr("10.3.0.1"), Destination: netip.MustParseAddr("10.1.0.5"), Port: 8080}
	c.SetIdentity("spiffe://cluster.local/ns/ops/sa/admin")
	if d := s.Authorize(dst, c); d.String() != "allowed: no ALLOW policies" {
		t.Errorf("no policies: got %q", d)
	}
	gen0, ch := s.PolicyChanges()

	denyOps := pol("shop", "deny-ops", security.Scope_WORKLOAD_SELECTOR, security.Action_DENY,
		&security.Match{Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "ops"}}}})
	bad := resource("shop/bad", &security.Authorization{Name: "bad", Namespace: "shop", Rules: []*security.Rule{{Clauses: []*security.Clause{{
		Matches: []*security.Match{{SourceIps: []*security.Address{{Address: []byte{1, 2, 3}}}}}}}}}})
	err := s.Update(xds.AuthorizationType, []xds.Resource{denyOps, bad}, nil)
	if err == nil || !strings.Contains(err.Error(), "shop/bad") {
		t.Errorf("Update with an invalid policy: got %v, want an error naming shop/bad", err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("policy update did not signal a change")
	}
	gen1, ch := s.PolicyChanges()
	if gen1 <= gen0 {
		t.Errorf("generation: got %d after %d", gen1, gen0)
	}
	// Not listed by the workload yet: not a candidate.
	if d := s.Authorize(dst, c); !d.Allowed() {
		t.Errorf("selector policy not listed: got %q", d)
	}
	// The workload now lists it: a change too.
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", healthy, policies("shop/deny-ops"))})
	select {
	case <-ch:
	default:
		t.Fatal("a workload's policy list change did not signal a change")
	}
	dst, _ = s.LocalWorkload("shop", "web-1")
	if d := s.Authorize(dst, c); d.String() != "denied by policy shop/deny-ops" {
		t.Errorf("listed DENY: got %q", d)
	}
	_, ch = s.PolicyChanges()
	// An update that changes nothing of the policy lists does not signal.
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", unhealthy, policies("shop/deny-ops"))})
	select {
	case <-ch:
		t.Error("a workload update without policy list change signalled")
	default:
	}
	mustUpdate(t, s, xds.AuthorizationType, nil, "shop/deny-ops")
	select {
	case <-ch:
	default:
		t.Fatal("policy removal did not signal")
	}
	if d := s.Authorize(dst, c); !d.Allowed() {
		t.Errorf("after removal: got %q", d)
	}
}

func TestDump(t *testing.T) {
	s := New(Config{})
	waypoint := func(w *workload.Workload) {
		w.Waypoint = &workload.GatewayAddress{Destination: &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{
			Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}, HboneMtlsPort: 15008}
	}
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", waypoint), svc("shop", "web", "10.96.0.10", 80, 8080)})
	match := &security.Match{DestinationPorts: []uint32{80}, Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{}}}}
	mustUpdate(t, s, xds.AuthorizationType, []xds.Resource{pol("shop", "p", security.Scope_NAMESPACE, security.Action_DENY, match)})
	b, err := json.Marshal(s.Dump())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"uid":"Kubernetes//Pod/shop/web-1"`, `"addresses":["10.1.0.5"]`, `"key":"shop/web.shop.svc.cluster.local"`,
		// The shape encoding/json gave api/workload's generated GatewayAddress.
		`"waypoint":{"Destination":{"Hostname":{"namespace":"shop","hostname":"waypoint.shop.svc.cluster.local"}},"hbone_mtls_port":15008}`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("dump %s: missing %s", b, want)
		}
	}
	// Policies in protobuf JSON, as protojson wrote them.
	var got struct{ Policies []any }
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	pj, err := protojson.Marshal(&security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{match}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(pj, &want); err != nil {
		t.Fatal(err)
	}
	if len(got.Policies) != 1 || !reflect.DeepEqual(got.Policies[0], want) {
		t.Errorf("got policies %v, want [%v]", got.Policies, want)
	}
}

func TestUpdateRefusesMismatches(t *testing.T) {
	s := New(Config{})
	r := wl("shop", "web-1", "10.1.0.5")
	r.Name = "other"
	if err := s.Update(xds.AddressType, []xds.Resource{r, resource("x", &workload.Address{})}, nil); err == nil {
		t.Error("Update with a mismatched name and an empty address: got no error")
	}
	if err := s.Update("type.googleapis.com/other", nil, nil); err == nil {
		t.Error("Update of an unknown type: got no error")
	}
}

// TestConcurrentReaders runs readers against a writer (meaningful under -race).
func TestConcurrentReaders(t *testing.T) {
	s := New(Config{})
	key := "shop/web.shop.svc.cluster.local"
	s.SetLookuper(&fakeLookuper{t: t, s: s, remote: map[string][]xds.Resource{key: nil}})
	mustUpdate(t, s, xds.AddressType, []xds.Resource{svc("shop", "web", "10.96.0.10", 80, 8080)})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			c := &authz.Conn{Port: 80}
			for ctx.Err() == nil {
				if w, ok := s.WorkloadByAddr("", netip.MustParseAddr("10.1.0.5")); ok {
					s.Authorize(w, c)
				}
				if sv, _, ok := s.ServiceByVIP("", netip.MustParseAddr("10.96.0.10"), 80); ok {
					s.PickEndpoint(ctx, sv, 80)
				}
				s.Dump()
			}
		})
	}
	for i := range 300 {
		ip := "10.1.0.5"
		if i%2 == 1 {
			ip = "10.1.0.6"
		}
		mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", ip, healthy, backs(key, 80, 8080), policies("shop/p"))})
		mustUpdate(t, s, xds.AuthorizationType, []xds.Resource{pol("shop", "p", security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{uint32(i)}})})
	}
	cancel()
	wg.Wait()
	if got := slices.Collect(func(yield func(string) bool) {
		s.Policies().All(func(p *authz.Policy) bool { return yield(p.Key) })
	}); !slices.Equal(got, []string{"shop/p"}) {
		t.Errorf("policies: got %v", got)
	}
}

func TestConnectionPathDoesNotAllocate(t *testing.T) {
	s := New(Config{})
	key := "shop/web.shop.svc.cluster.local"
	mustUpdate(t, s, xds.AddressType, []xds.Resource{svc("shop", "web", "10.96.0.10", 80, 8080), wl("shop", "web-1", "10.1.0.5", healthy, backs(key, 80, 8080), policies("shop/p"))})
	mustUpdate(t, s, xds.AuthorizationType, []xds.Resource{pol("shop", "p", security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{8080}})})
	ctx := context.Background()
	sv, _, _ := s.ServiceByVIP("", netip.MustParseAddr("10.96.0.10"), 80)
	if _, err := s.Endpoints(ctx, sv); err != nil { // the first call subscribes
		t.Fatal(err)
	}
	c := &authz.Conn{Port: 8080}
	vip, pod := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.1.0.5")
	allocs := testing.AllocsPerRun(500, func() {
		sv, _, _ := s.ServiceByVIP("", vip, 80)
		ep, err := s.PickEndpoint(ctx, sv, 80)
		if err != nil {
			t.Fatal(err)
		}
		w, _ := s.WorkloadByAddr("", pod)
		if !s.Authorize(w, c).Allowed() || ep.Workload != w {
			t.Fatal("unexpected decision")
		}
	})
	if allocs != 0 {
		t.Errorf("connection path allocates %v times, want 0", allocs)
	}
}

// A policy often arrives in two updates (its Authorization, then the workload that selects it);
// the second may land while the callback for the first runs, and must call it again, or the
// open connections are rechecked against half the change only.
func TestOnPolicyChangeSeesChangesMadeWhileRunning(t *testing.T) {
	s := New(Config{})
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", healthy)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan uint64)
	proceed := make(chan struct{})
	gen0, _ := s.PolicyChanges()
	go s.OnPolicyChange(ctx, gen0, func(gen uint64) {
		calls <- gen
		<-proceed
	})

	denyOps := pol("shop", "deny-ops", security.Scope_WORKLOAD_SELECTOR, security.Action_DENY,
		&security.Match{Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "ops"}}}})
	mustUpdate(t, s, xds.AuthorizationType, []xds.Resource{denyOps})
	first := receive(t, calls, "the call for the Authorization update")
	// The callback runs (blocked on proceed) while the workload starts selecting the policy.
	mustUpdate(t, s, xds.AddressType, []xds.Resource{wl("shop", "web-1", "10.1.0.5", healthy, policies("shop/deny-ops"))})
	proceed <- struct{}{}
	second := receive(t, calls, "a second call for the workload update made during the first")
	if second <= first {
		t.Errorf("second call's generation %d, want after %d", second, first)
	}
	if gen, _ := s.PolicyChanges(); second != gen {
		t.Errorf("second call's generation %d, want the current one, %d", second, gen)
	}
	close(proceed)
}

func receive(t *testing.T, calls <-chan uint64, what string) uint64 {
	t.Helper()
	select {
	case gen := <-calls:
		return gen
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5 s", what)
		return 0
	}
}
