package proxy

import (
	"io"
	"net/netip"
	"regexp"
	"testing"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestForwardedFor(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   string
	}{
		{`for="10.1.2.3:4567"`, "10.1.2.3:4567"},
		{`for="10.1.2.3:4567";host=web.shop.svc.cluster.local`, "10.1.2.3:4567"},
		{`host=x;For="10.1.2.3:80"`, "10.1.2.3:80"},
		{`for="10.1.2.3:1", for="10.9.9.9:2"`, "10.1.2.3:1"},
		{`for="[::ffff:10.1.2.3]:9"`, "10.1.2.3:9"},
		{`for=unknown`, ""},
		{`for="10.1.2.3"`, ""},
		{``, ""},
	} {
		h := hbone.Header{}
		if tc.header != "" {
			h.Set("Forwarded", tc.header)
		}
		got, ok := forwardedFor(h)
		if tc.want == "" {
			if ok {
				t.Errorf("forwardedFor(%q) = %v, want none", tc.header, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("forwardedFor(%q) = %v, %v; want %s", tc.header, got, ok, tc.want)
		}
	}
}

func TestTraceparent(t *testing.T) {
	re := regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-00$`)
	a, b := newTraceparent(), newTraceparent()
	if !re.MatchString(a) || a == b {
		t.Errorf("traceparents %q, %q: want distinct W3C version-00 values", a, b)
	}
}

func TestBaggage(t *testing.T) {
	w := &apiwire.Workload{ClusterID: "Kubernetes", Namespace: "shop", WorkloadName: "web", WorkloadType: apiwire.TypeDeployment,
		CanonicalName: "web", CanonicalRevision: "v1"}
	want := "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1"
	if got := baggage(w); got != want {
		t.Errorf("baggage = %q, want %q", got, want)
	}
	if got := baggage(&apiwire.Workload{Namespace: "x"}); got != "k8s.namespace.name=x" {
		t.Errorf("baggage of a bare workload = %q", got)
	}
}

// TestRelayHalfClose checks that each direction ends on its own: the client's half-close
// reaches the server, which can still answer.
func TestRelayHalfClose(t *testing.T) {
	client, clientSide := testutil.TCPPair(t)
	serverSide, server := testutil.TCPPair(t)
	done := make(chan [2]int64, 1)
	go func() {
		a, b, err := relay(testWorkers, clientSide, serverSide, nopRecord{})
		if err != nil {
			t.Errorf("relay: %v", err)
		}
		done <- [2]int64{a, b}
	}()
	client.Write([]byte("request"))
	client.CloseWrite()
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v; want the request then EOF", got, err)
	}
	server.Write([]byte("answer!"))
	server.Close()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "answer!" {
		t.Fatalf("client read %q, %v; want the answer then EOF", got, err)
	}
	if n := <-done; n != [2]int64{7, 7} {
		t.Errorf("relay counted %v bytes, want 7 each way", n)
	}
	client.Close()
}
