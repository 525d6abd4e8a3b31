package datapath

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// checkHBONE checks that the Ambit variant's traffic went through both ztunnels as HBONE:
// each ztunnel counts, as mutual TLS between the client's and the server's SPIFFE identities,
// at least the connections fortio opened. It returns a summary for the log.
func checkHBONE(ctx context.Context, ns string, ztunnels []corev1.Pod) (string, error) {
	clientID := "spiffe://cluster.local/ns/" + ns + "/sa/client"
	serverID := "spiffe://cluster.local/ns/" + ns + "/sa/server"
	want := []string{`source_principal="` + clientID + `"`, `destination_principal="` + serverID + `"`, `connection_security_policy="mutual_tls"`}
	var summary []string
	for _, zt := range ztunnels {
		n, err := counter(ctx, zt.Status.PodIP, "istio_tcp_connections_opened_total", want)
		if err != nil {
			return "", fmt.Errorf("ztunnel %s on %s: %w", zt.Name, zt.Spec.NodeName, err)
		}
		if n < connections {
			return "", fmt.Errorf("ztunnel %s on %s counts %v connections from %s to %s with mutual TLS; want at least fortio's %d",
				zt.Name, zt.Spec.NodeName, n, clientID, serverID, connections)
		}
		summary = append(summary, fmt.Sprintf("ztunnel on %s counted %v mutual-TLS connections %s -> %s", zt.Spec.NodeName, n, clientID, serverID))
	}
	return strings.Join(summary, "; "), nil
}

// counter sums the values of a ztunnel's metric over the lines whose labels hold every one
// of want.
func counter(ctx context.Context, podIP, metric string, want []string) (float64, error) {
	url := fmt.Sprintf("http://%s:15020/metrics", podIP)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := httpGet(ctx, url)
	if err != nil {
		return 0, err
	}
	defer req.Close()
	var sum float64
	var lines int
	sc := bufio.NewScanner(io.LimitReader(req, 8<<20))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") || !all(line, want) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: line %q: %w", url, line, err)
		}
		sum += v
		lines++
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", url, err)
	}
	if lines == 0 {
		return 0, fmt.Errorf("%s: no line of %s with %s", url, metric, strings.Join(want, ", "))
	}
	return sum, nil
}

func httpGet(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := newRequest(ctx, url)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("getting %s: %w", url, err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, fmt.Errorf("getting %s: %s", url, resp.Status)
	}
	return resp.Body, nil
}

func all(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// median of xs (which it sorts).
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// column is one figure of the table.
type column struct {
	head, unit string // unit names the metric for b.ReportMetric
	get        func(sample) float64
	format     string
	proxyOnly  bool // the no-mesh path has no proxy to measure
}

var columns = []column{
	{"p50 ms", "p50-ms", func(s sample) float64 { return s.p50 }, "%.3f", false},
	{"p90 ms", "p90-ms", func(s sample) float64 { return s.p90 }, "%.3f", false},
	{"p99 ms", "p99-ms", func(s sample) float64 { return s.p99 }, "%.3f", false},
	{"max qps", "max-qps", func(s sample) float64 { return s.maxQPS }, "%.0f", false},
	{"Gbit/s", "Gbit/s", func(s sample) float64 { return s.gbps }, "%.2f", false},
	{"cores/1k rps", "proxy-cores/1000rps", func(s sample) float64 { return s.cpuPer1k }, "%.4f", true},
	{"RSS MiB", "proxy-RSS-MiB", func(s sample) float64 { return s.rssMiB }, "%.1f", true},
	{"PSS MiB", "proxy-PSS-MiB", func(s sample) float64 { return s.pssMiB }, "%.1f", true},
}

// report prints the medians per variant, the ratios of Ambit against the nginx pair and
// against no mesh, and the latency each proxy path adds, and reports them as benchmark
// metrics. It asserts nothing: speed is for people to judge.
func report(b *testing.B, variants []*variant, results map[string][]sample) {
	med := map[string][]float64{}
	for _, v := range variants {
		for _, col := range columns {
			var xs []float64
			for _, s := range results[v.name] {
				xs = append(xs, col.get(s))
			}
			med[v.name] = append(med[v.name], median(xs))
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "data path, medians of %d passes (fortio %d connections, %d B each way, %d qps for latency and CPU; iperf3 one stream, each pass the median of %d runs)\n", *passes, connections, payloadSize, fixedQPS, iperfRuns)
	fmt.Fprintf(&t, "%-16s", "")
	for _, col := range columns {
		fmt.Fprintf(&t, "%14s", col.head)
	}
	t.WriteString("\n")
	for _, v := range variants {
		fmt.Fprintf(&t, "%-16s", v.name)
		for i, col := range columns {
			if col.proxyOnly && len(v.proxies) == 0 {
				fmt.Fprintf(&t, "%14s", "-")
				continue
			}
			fmt.Fprintf(&t, "%14s", fmt.Sprintf(col.format, med[v.name][i]))
			b.ReportMetric(med[v.name][i], metricName(v.name)+"-"+col.unit)
		}
		t.WriteString("\n")
	}
	if len(med[ambit]) == 0 || len(med[nginx]) == 0 || len(med[noMesh]) == 0 {
		t.WriteString("(ratios need all three variants; -datapath.only left some out)\n")
		fmt.Print(t.String())
		return
	}
	for _, against := range []string{nginx, noMesh} {
		fmt.Fprintf(&t, "%-16s", "Ambit / "+against)
		for i, col := range columns {
			den := med[against][i]
			if den == 0 {
				fmt.Fprintf(&t, "%14s", "-")
				continue
			}
			r := med[ambit][i] / den
			fmt.Fprintf(&t, "%14s", fmt.Sprintf("%.2fx", r))
			b.ReportMetric(r, "ambit/"+metricName(against)+"-"+col.unit)
		}
		t.WriteString("\n")
	}
	// Latency added to the no-mesh path, the figure the goals compare.
	for i, col := range columns[:3] {
		addA, addN := med[ambit][i]-med[noMesh][i], med[nginx][i]-med[noMesh][i]
		fmt.Fprintf(&t, "%s added over no mesh: Ambit %.3f ms, nginx pair %.3f ms", col.head[:3], addA, addN)
		if addN > 0 {
			fmt.Fprintf(&t, ", ratio %.2fx", addA/addN)
			b.ReportMetric(addA/addN, "ambit/nginx-added-"+col.unit)
		}
		t.WriteString("\n")
	}
	fmt.Print(t.String())
}

func metricName(variant string) string {
	switch variant {
	case ambit:
		return "ambit"
	case nginx:
		return "nginx"
	default:
		return "nomesh"
	}
}

func newRequest(ctx context.Context, url string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("request for %s: %w", url, err)
	}
	return req, nil
}
