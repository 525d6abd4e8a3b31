package zconfig

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// The tables read what ztunnel really writes: the dump is made from ztunnel's own types, so a
// change of its JSON breaks this test rather than the command.
func TestPrintTables(t *testing.T) {
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ws := mustJSON([]*state.Workload{
		{UID: "u1", Name: "nginx-v1-abc", Namespace: "demo", Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.5")}, HBONE: true,
			TrustDomain: "cluster.local", ServiceAccount: "nginx", Node: "node-2", Services: map[string][]state.Port{"demo/nginx.demo.svc.cluster.local": {{ServicePort: 80, TargetPort: 8080}}}},
		{UID: "u2", Name: "plain", Namespace: "other", Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.9")}, TrustDomain: "cluster.local", ServiceAccount: "default", Node: "node-1"},
		{UID: "u3", Name: "reviews-v1", Namespace: "shop", Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.7")}, HBONE: true, TrustDomain: "cluster.local",
			ServiceAccount: "reviews", Node: "node-1", Waypoint: &apiwire.GatewayAddress{Hostname: &apiwire.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}, HBONEMTLSPort: 15008}},
	})
	svcs := mustJSON([]*state.Service{{Key: "demo/nginx.demo.svc.cluster.local", Name: "nginx", Namespace: "demo", Hostname: "nginx.demo.svc.cluster.local",
		VIPs: []state.NetworkAddr{{Addr: netip.MustParseAddr("10.96.0.50")}}},
		{Key: "shop/reviews.shop.svc.cluster.local", Name: "reviews", Namespace: "shop", Hostname: "reviews.shop.svc.cluster.local",
			VIPs:     []state.NetworkAddr{{Addr: netip.MustParseAddr("10.96.0.60")}},
			Waypoint: &apiwire.GatewayAddress{Address: &apiwire.NetworkAddress{Address: []byte{10, 96, 0, 70}}, HBONEMTLSPort: 15008}}})
	pols := mustJSON([]json.RawMessage{
		json.RawMessage(`{"name":"allow-client","namespace":"demo","scope":"WORKLOAD_SELECTOR","groups":[]}`),
		json.RawMessage(`{"name":"deny-all","namespace":"istio-system","action":"DENY"}`),
	})
	now := time.Now()
	certsJSON := mustJSON([]certs.Status{
		{Identity: "spiffe://cluster.local/ns/demo/sa/nginx", Ready: true, Serial: "abc", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)},
		{Identity: "spiffe://cluster.local/ns/demo/sa/client", LastError: "istiod unreachable"},
	})
	for _, tc := range []struct {
		section string
		nodes   []Node
		want    []string
	}{
		{"workloads", []Node{{Name: "node-2", Section: ws}}, []string{
			"NAMESPACE  POD NAME", "demo       nginx-v1-abc  10.244.2.5  node-2  None      HBONE     spiffe://cluster.local/ns/demo/sa/nginx",
			"other      plain         10.244.1.9  node-1  None      TCP",
			"shop       reviews-v1    10.244.1.7  node-1  waypoint.shop.svc.cluster.local  HBONE"}},
		{"workloads", []Node{{Name: "node-1", Section: ws}, {Name: "node-2", Section: ws}}, []string{"ZTUNNEL NODE", "node-1        demo", "node-2        other"}},
		{"services", []Node{{Name: "node-2", Section: svcs, Workloads: ws}}, []string{"demo       nginx         10.96.0.50   None        1", "shop       reviews       10.96.0.60   10.96.0.70  0"}},
		{"policies", []Node{{Name: "node-2", Section: pols}}, []string{"demo          allow-client  ALLOW   WORKLOAD_SELECTOR", "istio-system  deny-all      DENY    GLOBAL"}},
		{"certificates", []Node{{Name: "node-2", Section: certsJSON}}, []string{"spiffe://cluster.local/ns/demo/sa/nginx   Available", "Failed: istiod unreachable"}},
	} {
		var b strings.Builder
		if err := PrintTable(&b, tc.section, tc.nodes); err != nil {
			t.Fatalf("%s: %v", tc.section, err)
		}
		// Column widths follow the widest cell, so rows are compared with single spaces.
		squeeze := func(s string) string {
			return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' }), " ")
		}
		for _, w := range tc.want {
			if !strings.Contains(squeeze(b.String()), squeeze(w)) {
				t.Errorf("%s table does not contain %q:\n%s", tc.section, w, b.String())
			}
		}
	}
	if err := PrintTable(&strings.Builder{}, "routes", nil); err == nil || !strings.Contains(err.Error(), "workloads, services, policies, certificates") {
		t.Errorf("section routes: %v; want a refusal naming the sections", err)
	}
	if err := PrintTable(&strings.Builder{}, "workloads", []Node{{Name: "n", Section: []byte("{not json")}}); err == nil || !strings.Contains(err.Error(), "ztunnel on n") {
		t.Errorf("garbage dump: %v; want an error naming the node", err)
	}
}
