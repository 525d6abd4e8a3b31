package model

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

func pod(name, node, ip string, lbls map[string]string) *corev1.Pod {
	yes := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: lbls,
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-5d8f", Controller: &yes}}},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "web-sa",
			Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func service(name string, selector map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"},
		Spec: corev1.ServiceSpec{Selector: selector, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "tcp", Port: 9000, TargetPort: intstr.FromInt32(9001)},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			}},
	}
}

func view(t *testing.T, s *store.Store, node string) map[string]*workload.Address {
	t.Helper()
	out := map[string]*workload.Address{}
	for name, e := range s.View(AddressType, true, node, nil) {
		a := &workload.Address{}
		if err := e.Body.UnmarshalTo(a); err != nil {
			t.Fatal(err)
		}
		out[name] = a
	}
	return out
}

func names(m map[string]*workload.Address) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestIndexPodsAndServices(t *testing.T) {
	cfg := DefaultConfig()
	s := store.NewStore()
	x := NewIndex(cfg, s)
	web := pod("web-5d8f-abc", "node-1", "10.244.1.5", map[string]string{"app": "web", "pod-template-hash": "5d8f", "version": "v2"})
	other := pod("db-0", "node-2", "10.244.2.7", map[string]string{"app": "db"})
	x.SetPod(web)
	x.SetPod(other)
	x.SetPod(pod("pending", "node-1", "", nil)) // no IP yet: no workload
	x.SetService(service("web", map[string]string{"app": "web"}))

	got := view(t, s, "node-1")
	webUID, svcKey := "Kubernetes//Pod/ns/web-5d8f-abc", "ns/web.ns.svc.cluster.local"
	if want := []string{webUID, svcKey}; !slices.Equal(names(got), want) {
		t.Fatalf("node-1 view = %v; want %v", names(got), want)
	}
	w := got[webUID].GetWorkload()
	want := &workload.Workload{
		Uid: webUID, Name: "web-5d8f-abc", Namespace: "ns", TrustDomain: "cluster.local", ServiceAccount: "web-sa",
		Node: "node-1", CanonicalName: "web", CanonicalRevision: "v2", WorkloadType: workload.WorkloadType_DEPLOYMENT,
		WorkloadName: "web", Addresses: [][]byte{{10, 244, 1, 5}}, Status: workload.WorkloadStatus_HEALTHY, ClusterId: "Kubernetes",
		Services: map[string]*workload.PortList{svcKey: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9000, TargetPort: 9001}}}},
	}
	if !proto.Equal(w, want) {
		t.Errorf("workload =\n%v\nwant\n%v", w, want)
	}
	svc := got[svcKey].GetService()
	wantSvc := &workload.Service{Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{{Address: []byte{10, 96, 0, 10}}},
		Ports:     []*workload.Port{{ServicePort: 80, AppProtocol: workload.AppProtocol_HTTP11}, {ServicePort: 9000, TargetPort: 9001}}}
	if !proto.Equal(svc, wantSvc) {
		t.Errorf("service =\n%v\nwant\n%v", svc, wantSvc)
	}

	// The pod stops matching the selector: it leaves the service's map, the service its
	// includes.
	relabelled := web.DeepCopy()
	relabelled.Labels["app"] = "not-web"
	relabelled.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	x.SetPod(relabelled)
	w = view(t, s, "node-1")[webUID].GetWorkload()
	if len(w.Services) != 0 || w.TunnelProtocol != workload.TunnelProtocol_HBONE {
		t.Errorf("after relabel: services %v, tunnel %v; want none and HBONE", w.Services, w.TunnelProtocol)
	}
	if inc := s.View(AddressType, false, "", map[string]struct{}{svcKey: {}}); len(inc) != 1 {
		t.Errorf("subscribing to the service brings %d resources; want only itself", len(inc))
	}

	x.DeleteService("ns", "web")
	x.DeletePod("ns", "web-5d8f-abc")
	if got := names(view(t, s, "node-1")); len(got) != 0 {
		t.Errorf("after deletes node-1 view = %v; want empty", got)
	}
}

func TestIndexSelectorlessServiceUsesEndpointSlices(t *testing.T) {
	s := store.NewStore()
	x := NewIndex(DefaultConfig(), s)
	x.SetPod(pod("a", "node-1", "10.244.1.5", nil))
	x.SetService(service("manual", nil))
	x.SetEndpointSlice(&discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "manual-x", Namespace: "ns", Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "a"}}},
	})
	w := view(t, s, "node-1")["Kubernetes//Pod/ns/a"].GetWorkload()
	if _, ok := w.GetServices()["ns/manual.ns.svc.cluster.local"]; !ok {
		t.Errorf("pod a's services = %v; want the selectorless service from its EndpointSlice", w.GetServices())
	}
	x.DeleteEndpointSlice("ns", "manual-x")
	if w := view(t, s, "node-1")["Kubernetes//Pod/ns/a"].GetWorkload(); len(w.GetServices()) != 0 {
		t.Errorf("after the slice is gone, services = %v; want none", w.GetServices())
	}
}

func TestIndexNodeLocality(t *testing.T) {
	s := store.NewStore()
	x := NewIndex(DefaultConfig(), s)
	x.SetPod(pod("a", "node-1", "10.244.1.5", nil))
	x.SetNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{corev1.LabelTopologyRegion: "r1", corev1.LabelTopologyZone: "z1"}}})
	loc := view(t, s, "node-1")["Kubernetes//Pod/ns/a"].GetWorkload().GetLocality()
	if loc.GetRegion() != "r1" || loc.GetZone() != "z1" {
		t.Errorf("locality = %v; want r1/z1", loc)
	}
}
