package state

import (
	"context"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// FuzzUpdate applies arbitrary Address and Authorization resources, as a control plane may
// send them, and runs the connection-path queries over the result: nothing may panic, and a
// workload found by address must hold that address.
func FuzzUpdate(f *testing.F) {
	key := "shop/web.shop.svc.cluster.local"
	for _, r := range []xds.Resource{
		wl("shop", "web-1", "10.1.0.5", healthy, backs(key, 80, 8080), policies("shop/p")),
		svc("shop", "web", "10.96.0.10", 80, 0),
	} {
		b, _ := proto.Marshal(r.Message)
		p, _ := proto.Marshal(pol("shop", "p", security.Scope_WORKLOAD_SELECTOR, security.Action_DENY, &security.Match{DestinationPorts: []uint32{80}}).Message)
		f.Add(r.Name, b, "shop/p", p, []byte{10, 1, 0, 5}, uint16(80))
	}
	f.Fuzz(func(t *testing.T, name string, body []byte, polName string, polBody []byte, ipBytes []byte, port uint16) {
		s := New(Config{})
		var a workload.Address
		if proto.Unmarshal(body, &a) == nil {
			_ = s.Update(xds.AddressType, []xds.Resource{{Name: name, Message: &a}}, nil)
		}
		var p security.Authorization
		if proto.Unmarshal(polBody, &p) == nil {
			_ = s.Update(xds.AuthorizationType, []xds.Resource{{Name: polName, Message: &p}}, nil)
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
		if _, ok := s.WorkloadByAddr("", ip); ok && name == a.GetWorkload().GetUid() {
			t.Fatalf("workload %q still found after its removal", name)
		}
	})
}
