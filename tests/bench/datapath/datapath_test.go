// Package datapath benchmarks Ambit's L4 data path in a real two-node test cluster, as
// DESIGN.md section 12 fixes the method: a fortio client on node-1 and a fortio server on
// node-2, with no mesh, through two ztunnels (Ambit L4), and through an nginx stream pair doing
// mutual TLS 1.3 in the same positions (the C peer), all in one run. Run with `make bench`.
package datapath

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/tests/bench/hostcpu"
	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/mesh"
)

var c *cluster.Cluster

// benchImages are the images `make bench-images` builds besides `make images`; only this
// package's cluster imports them, so other clusters start without them.
var benchImages = []string{"fortio.tar", "nginx.tar", "iperf3.tar"}

func TestMain(m *testing.M) {
	cfg := cluster.Config{Nodes: 2}
	if os.Geteuid() == 0 {
		imgs, err := images()
		if err != nil {
			fmt.Fprintln(os.Stderr, "data-path benchmark:", err)
			os.Exit(1)
		}
		cfg.Images = imgs
	}
	os.Exit(cluster.RunTests(m, cfg, &c))
}

// images lists the archives of `make images` and of `make bench-images`.
func images() ([]string, error) {
	root, err := cluster.ModuleRoot()
	if err != nil {
		return nil, err
	}
	imgs, _ := filepath.Glob(filepath.Join(root, ".cache", "images", "*.tar"))
	if len(imgs) == 0 {
		return nil, fmt.Errorf("%w: no image archives in %s; run `make images`", cluster.ErrMissingPrerequisite, filepath.Join(root, ".cache", "images"))
	}
	for _, name := range benchImages {
		p := filepath.Join(root, ".cache", "bench-images", name)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w: image archive %s not found; run `make bench-images`", cluster.ErrMissingPrerequisite, p)
		}
		imgs = append(imgs, p)
	}
	return imgs, nil
}

// The servers' ports, in every variant.
const (
	httpPort  = 8080
	iperfPort = 5201
)

// workloads: a fortio echo server with an iperf3 server next to it on node-2, and a client pod
// on node-1 whose fortio and iperf3 containers idle as servers until the benchmark execs
// their clients. Each has its own service account, so in the mesh each has its own SPIFFE
// identity. %[1]s is the server's node, %[2]s the client's, %[3]s the containers.
const workloads = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: server}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: %[1]s
  serviceAccountName: server
  containers:%[3]s
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: %[2]s
  serviceAccountName: client
  containers:%[3]s
`

// containers of both pods: fortio's echo server (its other servers off) and iperf3's server.
const containers = `
  - name: fortio
    image: ambit.local/fortio:dev
    imagePullPolicy: Never
    args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled, -loglevel, warning]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
  - name: iperf3
    image: ambit.local/iperf3:dev
    imagePullPolicy: Never
    args: [-s, -p, "5201"]`

// variant is one path between the same client and server pods.
type variant struct {
	name string
	ns   string
	// url is what fortio loads; iperfHost:iperfPort is what iperf3 connects to.
	url       string
	iperfHost string
	// proxies are the pods whose processes are the path's proxies (none without a mesh).
	proxies []*corev1.Pod
	// check, if set, makes sure the path is what its name says, on the traffic just measured.
	check func(context.Context) error
}

// sample is what one pass measured for one variant.
type sample struct {
	p50, p90, p99 float64 // ms at fixedQPS
	maxQPS        float64
	gbps          float64   // the median of gbpsRuns
	gbpsRuns      []float64 // each single-stream run's Gbit/s
	cpuPer1k      float64   // proxy cores per 1000 requests/s at fixedQPS
	rssMiB        float64   // proxy RSS at the end of the fixedQPS run
	pssMiB        float64   // the same, shared pages divided among the processes sharing them
}

// passes is how many times each variant is measured; figures are the medians. Passes of one
// variant differ by up to 1.6x on the shared 2-core machine, so 3 were too few to judge a goal.
var passes = flag.Int("datapath.passes", 5, "how many times each variant is measured (figures are the medians)")

// only narrows a run to some variants while tuning; the report's ratios need all three.
var only = flag.String("datapath.only", "", "comma-separated variant names to measure (e.g. \"Ambit L4\"); empty: all")

func BenchmarkDataPath(b *testing.B) {
	cluster.Require(b, c)
	ctx, cancel := context.WithTimeout(context.Background(), 28*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := mesh.Install(ctx, c, mesh.Options{})
	b.Cleanup(func() {
		if m != nil {
			m.Uninstall(context.Background())
		}
	})
	if err != nil {
		b.Fatalf("installing the mesh: %v", err)
	}
	b.Logf("mesh installed in %v", time.Since(start).Round(time.Millisecond))

	variants := setUp(ctx, b)
	b.Logf("set up in %v; machine: %d cores, load average %s", time.Since(start).Round(time.Millisecond), runtime.NumCPU(), loadAvg())

	results := map[string][]sample{}
	if *only != "" {
		variants = slices.DeleteFunc(variants, func(v *variant) bool {
			return !slices.Contains(strings.Split(*only, ","), v.name)
		})
	}
	for pass := range *passes {
		// Rotate the order so that no variant always runs first or last.
		for i := range variants {
			v := variants[(i+pass)%len(variants)]
			busy, top := waitIdle(ctx, b)
			t0, err := hostcpu.Read()
			if err != nil {
				b.Fatal(err)
			}
			s, err := measure(ctx, v)
			if err != nil {
				b.Fatalf("pass %d, %s: %v", pass+1, v.name, err)
			}
			t1, err := hostcpu.Read()
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("pass %d, %s (machine %.0f%% busy before: %s; hypervisor steal during it %.1f%%): p50/p90/p99 %.3f/%.3f/%.3f ms, max %.0f qps, %.2f Gbit/s (runs %.2f), %.4f cores/1000 rps, RSS %.1f MiB, PSS %.1f MiB",
				pass+1, v.name, busy*100, top, hostcpu.Steal(t0, t1)*100, s.p50, s.p90, s.p99, s.maxQPS, s.gbps, s.gbpsRuns, s.cpuPer1k, s.rssMiB, s.pssMiB)
			results[v.name] = append(results[v.name], s)
		}
		if pass == 0 {
			for _, v := range variants {
				if v.check == nil {
					continue
				}
				if err := v.check(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	report(b, variants, results)
	b.Logf("machine after the run: load average %s", loadAvg())

	// Where the ztunnels spend their CPU at the fixed rate, at full load and in a single bulk
	// stream, for whoever tunes them next.
	dir, err := os.MkdirTemp("", "ambit-datapath-profiles-")
	if err != nil {
		b.Fatal(err)
	}
	i := slices.IndexFunc(variants, func(v *variant) bool { return v.name == ambit })
	if i < 0 {
		return
	}
	amb := variants[i]
	for _, qps := range []int{fixedQPS, 0} {
		name, what := "max-rate", "a max-rate run"
		if qps > 0 {
			name, what = fmt.Sprintf("%d-qps", qps), fmt.Sprintf("a %d qps run", qps)
		}
		tops, err := profileZtunnels(ctx, amb, dir, name, int(runTime/time.Second)-2, func(ctx context.Context) error {
			_, err := runFortio(ctx, amb.ns, amb.url, qps)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("ztunnel CPU profiles over %s (kept in %s):\n%s", what, dir, tops)
	}
	tops, err := profileZtunnels(ctx, amb, dir, "bulk", int(iperfTime/time.Second)-1, func(ctx context.Context) error {
		_, err := runIperf(ctx, amb.ns, amb.iperfHost, iperfPort)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("ztunnel CPU profiles over a single-stream run (kept in %s):\n%s", dir, tops)
}

// Variant names, as the table prints them.
const (
	noMesh = "no mesh"
	ambit  = "Ambit L4"
	nginx  = "nginx pair"
)

// setUp starts the three variants' pods, each in its own namespace, and returns them, with
// their checks that each path is what it claims.
func setUp(ctx context.Context, b *testing.B) []*variant {
	serverNode, clientNode := c.Nodes[1].Name, c.Nodes[0].Name
	base := c.Namespace(b, nil)
	amb := c.Namespace(b, map[string]string{"istio.io/dataplane-mode": "ambient"})
	ngx := c.Namespace(b, nil)
	for _, ns := range []string{base, amb, ngx} {
		if err := c.Apply(ctx, ns, fmt.Sprintf(workloads, serverNode, clientNode, containers)); err != nil {
			b.Fatal(err)
		}
	}
	pods := map[string]map[string]*corev1.Pod{}
	for _, ns := range []string{base, amb, ngx} {
		pods[ns] = map[string]*corev1.Pod{}
		for _, app := range []string{"server", "client"} {
			p, err := c.WaitForPods(ctx, ns, "app="+app, 1, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			pods[ns][app] = &p[0]
		}
	}
	if err := checkEnrolled(ctx, amb, true); err != nil {
		b.Fatalf("%v%s", err, mesh.Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	for _, ns := range []string{base, ngx} {
		if err := checkEnrolled(ctx, ns, false); err != nil {
			b.Fatal(err)
		}
	}

	certs, err := newNginxCerts()
	if err != nil {
		b.Fatal(err)
	}
	out, in, err := startNginx(ctx, ngx, clientNode, serverNode, pods[ngx]["server"].Status.PodIP, certs)
	if err != nil {
		b.Fatal(err)
	}
	ztunnels, err := c.Client.CoreV1().Pods(mesh.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		b.Fatal(err)
	}
	if len(ztunnels.Items) != len(c.Nodes) {
		b.Fatalf("%d ztunnel pods; want one per node (%d)", len(ztunnels.Items), len(c.Nodes))
	}

	target := func(ns, host string) *variant {
		return &variant{ns: ns, url: fmt.Sprintf("http://%s:%d/echo", host, httpPort), iperfHost: host}
	}
	vBase := target(base, pods[base]["server"].Status.PodIP)
	vBase.name = noMesh
	vAmb := target(amb, pods[amb]["server"].Status.PodIP)
	vAmb.name = ambit
	for i := range ztunnels.Items {
		vAmb.proxies = append(vAmb.proxies, &ztunnels.Items[i])
	}
	vNgx := target(ngx, out.Status.PodIP)
	vNgx.name = nginx
	vNgx.proxies = []*corev1.Pod{out, in}

	vAmb.check = func(ctx context.Context) error {
		summary, err := checkHBONE(ctx, amb, ztunnels.Items)
		if err != nil {
			return fmt.Errorf("%s: %w%s", ambit, err, mesh.Diagnose(ctx, c, "app=ztunnel"))
		}
		b.Logf("%s went through HBONE: %s", ambit, summary)
		return nil
	}
	vNgx.check = func(ctx context.Context) error {
		summary, err := checkNginxMTLS(ctx, ngx, in.Status.PodIP, certs)
		if err != nil {
			return fmt.Errorf("%s: %w", nginx, err)
		}
		b.Logf("%s did mutual TLS: %s", nginx, summary)
		return nil
	}
	return []*variant{vBase, vAmb, vNgx}
}

// checkEnrolled checks that the cni agent captured the pods of ns (want) or left them alone.
func checkEnrolled(ctx context.Context, ns string, want bool) error {
	return c.Wait(ctx, time.Minute, fmt.Sprintf("pods of %s enrolled: %v", ns, want), func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range list.Items {
			if (p.Annotations["ambient.istio.io/redirection"] == "enabled") != want {
				return false, nil
			}
		}
		return len(list.Items) > 0, nil
	})
}

// measure runs one pass of the load against v: the fixed-rate run with the proxies' CPU and
// RSS, the max-rate run, and the single-stream throughput.
func measure(ctx context.Context, v *variant) (sample, error) {
	var s sample
	var pids []int
	for _, p := range v.proxies {
		ps, err := podPIDs(string(p.UID))
		if err != nil {
			return s, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		pids = append(pids, ps...)
	}
	cpuBefore, err := cpuTime(pids)
	if err != nil {
		return s, err
	}
	fixed, err := runFortio(ctx, v.ns, v.url, fixedQPS)
	if err != nil {
		return s, err
	}
	cpuAfter, err := cpuTime(pids)
	if err != nil {
		return s, err
	}
	rssBytes, err := rss(pids)
	if err != nil {
		return s, err
	}
	pssBytes, err := pss(pids)
	if err != nil {
		return s, err
	}
	for _, q := range []struct {
		p   float64
		dst *float64
	}{{50, &s.p50}, {90, &s.p90}, {99, &s.p99}} {
		if *q.dst, err = fixed.percentile(q.p); err != nil {
			return s, err
		}
	}
	if len(pids) > 0 {
		cores := (cpuAfter - cpuBefore).Seconds() / fixed.ActualDuration.Seconds()
		s.cpuPer1k = cores / (fixed.ActualQPS / 1000)
		s.rssMiB = float64(rssBytes) / (1 << 20)
		s.pssMiB = float64(pssBytes) / (1 << 20)
	}
	max, err := runFortio(ctx, v.ns, v.url, 0)
	if err != nil {
		return s, err
	}
	s.maxQPS = max.ActualQPS
	for range iperfRuns {
		g, err := runIperf(ctx, v.ns, v.iperfHost, iperfPort)
		if err != nil {
			return s, err
		}
		s.gbpsRuns = append(s.gbpsRuns, g)
	}
	s.gbps = median(slices.Clone(s.gbpsRuns)) // median sorts: the log keeps the runs in order
	return s, nil
}

// waitIdle waits (at most a minute) for the machine to be mostly idle before a pass, since
// its cores are shared, and returns how busy it was last and the processes busiest then.
func waitIdle(ctx context.Context, b *testing.B) (float64, string) {
	deadline := time.Now().Add(time.Minute)
	for {
		busy, top, err := machineBusy(2 * time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if busy < 0.25 || ctx.Err() != nil {
			return busy, top
		}
		if time.Now().After(deadline) {
			b.Logf("the machine is still %.0f%% busy after a minute (%s); measuring anyway", busy*100, top)
			return busy, top
		}
	}
}

// loadAvg is the machine's 1, 5 and 15 minute load averages.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return string(data)
	}
	return strings.Join(f[:3], " ")
}
