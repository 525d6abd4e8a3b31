package cluster

import (
	"slices"
	"testing"
)

// kube-proxy's iptables mode, as iptables-save prints it: nginx has one endpoint programmed,
// web (an unnamed port) one, and echo none yet.
const natRules = `*nat
:KUBE-SEP-AAA - [0:0]
-A KUBE-SERVICES -d 10.96.199.53/32 -p tcp -m comment --comment "demo/nginx:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-N
-A KUBE-SVC-N -m comment --comment "demo/nginx:http -> 10.244.1.5:8080" -j KUBE-SEP-AAA
-A KUBE-SEP-AAA -s 10.244.1.5/32 -m comment --comment "demo/nginx:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAA -p tcp -m comment --comment "demo/nginx:http" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-BBB -p tcp -m comment --comment demo/web -m tcp -j DNAT --to-destination 10.244.2.7:80
-A KUBE-SEP-CCC -p tcp -m comment --comment "demo/nginx-v2:http" -m tcp -j DNAT --to-destination 10.244.2.9:8080
COMMIT
`

func TestUnprogrammed(t *testing.T) {
	for _, tc := range []struct {
		service string
		dests   []string
		want    []string
	}{
		{"demo/nginx", []string{"10.244.1.5:8080"}, nil},
		{"demo/nginx", []string{"10.244.1.5:8080", "10.244.2.9:8080"}, []string{"10.244.2.9:8080"}},
		{"demo/web", []string{"10.244.2.7:80"}, nil},
		{"demo/echo", []string{"10.244.1.5:8080"}, []string{"10.244.1.5:8080"}},
	} {
		if got := unprogrammed(natRules, tc.service, tc.dests); !slices.Equal(got, tc.want) {
			t.Errorf("unprogrammed(%s, %v) = %v; want %v", tc.service, tc.dests, got, tc.want)
		}
	}
}
