// Package bench measures Ambit at scale against a real API server. Run with `make bench`.
package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

var c *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(cluster.RunTests(m, cluster.Config{ControlPlaneOnly: true}, &c))
}

// The generated cluster: pods spread evenly over nodes and services.
const (
	nodes       = 100
	services    = 1000
	podsPerSvc  = 10
	namespaces  = 20
	changeCount = 40
)

// populate creates Nodes, Services and Pods (with a Running, Ready status and an IP, as a
// kubelet would report) in the API server. No kubelet runs them.
func populate(ctx context.Context, b *testing.B, client kubernetes.Interface) {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for n := range nodes {
		g.Go(func() error {
			_, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(n),
				Labels: map[string]string{corev1.LabelTopologyZone: fmt.Sprintf("zone-%d", n%3)}}}, metav1.CreateOptions{})
			return err
		})
	}
	for ns := range namespaces {
		g.Go(func() error {
			_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(ns)}}, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	g, ctx = errgroup.WithContext(context.WithoutCancel(ctx))
	g.SetLimit(48)
	for s := range services {
		ns := nsName(s % namespaces)
		g.Go(func() error {
			_, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", s)},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": fmt.Sprintf("app-%d", s)},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
			}, metav1.CreateOptions{})
			return err
		})
		for i := range podsPerSvc {
			g.Go(func() error {
				p := s*podsPerSvc + i
				pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", p), Labels: map[string]string{"app": fmt.Sprintf("app-%d", s)}},
					Spec: corev1.PodSpec{NodeName: nodeName(p % nodes), Containers: []corev1.Container{{Name: "app", Image: "ambit.local/echo:dev"}},
						// No kubelet will ever report these nodes: keep the pods through the
						// benchmark despite the taints the node controller adds.
						Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}},
				}, metav1.CreateOptions{})
				if err != nil {
					return err
				}
				ip := fmt.Sprintf("10.%d.%d.%d", 100+p/65536, (p/256)%256, p%256)
				pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
				_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}

func nodeName(i int) string { return fmt.Sprintf("sim-node-%d", i) }
func nsName(i int) string   { return fmt.Sprintf("bench-%d", i) }

// client is one simulated ztunnel: a delta xDS stream that records what it holds and when each
// resource last arrived.
type client struct {
	mu    sync.Mutex
	bytes map[string]int
	seen  map[string]time.Time
	ready chan struct{}
}

func connect(ctx context.Context, b *testing.B, addr, node string) *client {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		b.Fatal(err)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	n := &core.Node{Id: "ztunnel~bench~" + node}
	if node != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{xds.NodeNameKey: structpb.NewStringValue(node)}}
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: n, TypeUrl: model.AddressType}); err != nil {
		b.Fatal(err)
	}
	cl := &client{bytes: map[string]int{}, seen: map[string]time.Time{}, ready: make(chan struct{})}
	go func() {
		defer conn.Close()
		first := true
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			now := time.Now()
			cl.mu.Lock()
			for _, res := range r.Resources {
				cl.bytes[res.Name] = len(res.Resource.GetValue())
				cl.seen[res.Name] = now
			}
			for _, name := range r.RemovedResources {
				delete(cl.bytes, name)
			}
			cl.mu.Unlock()
			stream.Send(&discovery.DeltaDiscoveryRequest{Node: n, TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			if first {
				close(cl.ready)
				first = false
			}
		}
	}()
	return cl
}

func (cl *client) held() (count, bytes int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, n := range cl.bytes {
		bytes += n
	}
	return len(cl.bytes), bytes
}

func (cl *client) seenAfter(name string, t time.Time) (time.Time, bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s, ok := cl.seen[name]
	return s, ok && s.After(t)
}

// startIstiod builds and runs istiod-lite as its own process, so its memory is its own.
func startIstiod(ctx context.Context, b *testing.B) (addr string, pid int) {
	root, err := cluster.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(b.TempDir(), "istiod-lite")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(root, "istiod-lite")).CombinedOutput(); err != nil {
		b.Fatalf("building istiod-lite: %v\n%s", err, out)
	}
	xdsAddr, httpAddr := freeAddr(b), freeAddr(b)
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig", c.Kubeconfig, "--xds-plaintext-addr", xdsAddr,
		"--xds-tls-addr", freeAddr(b), "--http-addr", httpAddr)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if resp, err := http.Get("http://" + httpAddr + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return xdsAddr, cmd.Process.Pid
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("istiod-lite not ready within 3 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func rssMiB(pid int) float64 {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

// BenchmarkScale measures istiod-lite with 10k pods, 1k services and 100 nodes: how long a
// change takes to reach the clients that need it, its memory, and how much a node-scoped
// client holds compared with a full-state one (Istio's scheme).
func BenchmarkScale(b *testing.B) {
	if c == nil {
		b.Skip("skipping: the benchmark cluster needs root")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.InstallIstioCRDs(ctx); err != nil {
		b.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, "istio-system", nil); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	populate(ctx, b, c.Client)
	b.Logf("created %d nodes, %d services, %d pods in %v", nodes, services, services*podsPerSvc, time.Since(began).Round(time.Second))
	addr, pid := startIstiod(ctx, b)

	clients := make([]*client, nodes)
	for i := range clients {
		clients[i] = connect(ctx, b, addr, nodeName(i))
	}
	full := connect(ctx, b, addr, "")
	for _, cl := range append(clients, full) {
		<-cl.ready
	}
	b.ResetTimer()

	// A pod change reaches the client of its node.
	var podLat []time.Duration
	for i := range changeCount {
		p := i * 97 % (services * podsPerSvc)
		ns, name := nsName(p/podsPerSvc%namespaces), fmt.Sprintf("pod-%d", p)
		uid := "Kubernetes//Pod/" + ns + "/" + name
		owner := clients[p%nodes]
		t0 := time.Now()
		patch := fmt.Sprintf(`{"metadata":{"labels":{"version":"v%d"}}}`, i+2)
		if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		podLat = append(podLat, waitSeen(b, []*client{owner}, uid, t0))
	}
	// A Service change reaches every client.
	var svcLat []time.Duration
	for i := range changeCount / 4 {
		s := i * 13 % services
		ns, name := nsName(s%namespaces), fmt.Sprintf("svc-%d", s)
		key := ns + "/" + name + "." + ns + ".svc.cluster.local"
		t0 := time.Now()
		// The port name says HTTP/1.1: declaring gRPC changes the Service resource.
		patch := `{"spec":{"ports":[{"name":"http","port":80,"targetPort":8080,"appProtocol":"grpc"}]}}`
		if _, err := c.Client.CoreV1().Services(ns).Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		svcLat = append(svcLat, waitSeen(b, clients, key, t0))
	}
	b.StopTimer()

	var scopedBytes, scopedCount int
	for _, cl := range clients {
		n, by := cl.held()
		scopedCount += n
		scopedBytes += by
	}
	fullCount, fullBytes := full.held()
	b.ReportMetric(float64(percentile(podLat, 0.5).Microseconds())/1000, "pod-p50-ms")
	b.ReportMetric(float64(percentile(podLat, 0.99).Microseconds())/1000, "pod-p99-ms")
	b.ReportMetric(float64(percentile(svcLat, 0.5).Microseconds())/1000, "svc-all-p50-ms")
	b.ReportMetric(float64(percentile(svcLat, 0.99).Microseconds())/1000, "svc-all-p99-ms")
	b.ReportMetric(rssMiB(pid), "istiod-rss-MiB")
	b.ReportMetric(float64(scopedBytes)/nodes/1024, "scoped-KiB/client")
	b.ReportMetric(float64(fullBytes)/1024, "full-KiB/client")
	b.ReportMetric(float64(fullBytes)/(float64(scopedBytes)/nodes), "full/scoped")
	b.Logf("node-scoped clients hold %d resources on average (%.0f KiB); a full-state client holds %d (%.0f KiB)",
		scopedCount/nodes, float64(scopedBytes)/nodes/1024, fullCount, float64(fullBytes)/1024)
}

// waitSeen waits until every client has received name after t0 and returns the latest
// arrival's delay.
func waitSeen(b *testing.B, clients []*client, name string, t0 time.Time) time.Duration {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var latest time.Time
		all := true
		for _, cl := range clients {
			s, ok := cl.seenAfter(name, t0)
			if !ok {
				all = false
				break
			}
			if s.After(latest) {
				latest = s
			}
		}
		if all {
			return latest.Sub(t0)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not reach every client within 30s", name)
		}
		time.Sleep(time.Millisecond)
	}
}
