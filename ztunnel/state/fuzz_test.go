package state

import (
	"context"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// FuzzUpdate applies arbitrary Address and Authorization resources, as a control plane may
// send them, and runs the connection-path queries over the result: nothing may panic, and a
// workload found by address must hold that address.
func FuzzUpdate(f *testing.F) {
	key := "shop/web.shop.svc.cluster.local"
	for _, r := range []struct {
		name string
		m    proto.Message
	}{
		{uid("shop", "web-1"), &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: uid("shop", "web-1"),
			Namespace: "shop", Addresses: [][]byte{{10, 1, 0, 5}}, AuthorizationPolicies: []string{"shop/p"},
			Services: map[string]*workload.PortList{key: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}}}}}}},
		{key, &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{Name: "web", Namespace: "shop",
			Hostname: "web.shop.svc.cluster.local", Addresses: []*workload.NetworkAddress{{Address: []byte{10, 96, 0, 10}}},
			Ports: []*workload.Port{{ServicePort: 80}}}}}},
	} {
		b, _ := proto.Marshal(r.m)
		p, _ := proto.Marshal(&security.Authorization{Name: "p", Namespace: "shop", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
			Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{80}}}}}}}})
		f.Add(r.name, b, "shop/p", p, []byte{10, 1, 0, 5}, uint16(80))
	}
	f.Fuzz(func(t *testing.T, name string, body []byte, polName string, polBody []byte, ipBytes []byte, port uint16) {
		s := New(Config{})
		w, sv, err := apiwire.DecodeAddress(body)
		if err == nil {
			_ = s.Update(xds.AddressType, []xds.Resource{{Name: name, Workload: w, Service: sv}}, nil)
		}
		if p, err := apiwire.DecodeAuthorization(polBody); err == nil {
			_ = s.Update(xds.AuthorizationType, []xds.Resource{{Name: polName, Authorization: p}}, nil)
		}
		ip, ok := netip.AddrFromSlice(ipBytes)
		if !ok {
			return
		}
		if w, ok := s.WorkloadByAddr("", ip); ok {
			found := false
			for _, wa := range w.Addresses {
				found = found || wa == ip.Unmap()
			}
			if !found {
				t.Fatalf("WorkloadByAddr(%v) returned %v without that address", ip, w.Addresses)
			}
			s.Authorize(w, &authz.Conn{Source: ip, Destination: ip, Port: port})
		}
		if sv, _, ok := s.ServiceByVIP("", ip, port); ok {
			s.PickEndpoint(context.Background(), sv, port)
		}
		s.Dump()
		_ = s.Update(xds.AddressType, nil, []string{name})
		if _, ok := s.WorkloadByAddr("", ip); ok && w != nil && name == w.UID {
			t.Fatalf("workload %q still found after its removal", name)
		}
	})
}
