package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const openedMetric = "istio_tcp_connections_opened_total"

// scrape returns the lines of metric from the ztunnel on node (its pod's port 15020).
func (d *run) scrape(ctx context.Context, node, metric string) ([]string, error) {
	pods, err := d.Cluster.Client.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel",
		FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(pods.Items) != 1 {
		return nil, fmt.Errorf("finding the ztunnel pod on %s: %d pods, %v", node, len(pods.Items), err)
	}
	url := fmt.Sprintf("http://%s:15020/metrics", pods.Items[0].Status.PodIP)
	req, err := httpGet(ctx, url)
	if err != nil {
		return nil, err
	}
	resp, err := d.Cluster.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping ztunnel on %s: %w", node, err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), metric+"{") {
			out = append(out, sc.Text())
		}
	}
	return out, sc.Err()
}

// sum adds the values of the lines that contain every one of want.
func sum(lines []string, want ...string) float64 {
	total := 0.0
	for _, l := range lines {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if !all {
			continue
		}
		if v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total
}

// meshConnections is how many connections of the demo namespace's identities both ztunnels
// have counted.
func (d *run) meshConnections(ctx context.Context) (int, error) {
	total := 0.0
	for _, node := range []string{d.node1, d.node2} {
		lines, err := d.scrape(ctx, node, openedMetric)
		if err != nil {
			return 0, err
		}
		total += sum(lines, "/ns/"+Namespace+"/")
	}
	return int(total), nil
}

// waitMetric waits until the ztunnel on node counts connections on a line naming every one
// of want, and returns the count.
func (d *run) waitMetric(ctx context.Context, node string, want ...string) (int, error) {
	var n float64
	var lastErr error
	err := d.Cluster.Wait(ctx, 20*time.Second, openedMetric+" on "+node, func(ctx context.Context) (bool, error) {
		lines, err := d.scrape(ctx, node, openedMetric)
		if err != nil {
			lastErr = err
			return false, nil
		}
		n = sum(lines, want...)
		return n > 0, nil
	})
	if err != nil {
		return 0, fmt.Errorf("%w: no %s line with %s (%v)", err, openedMetric, strings.Join(want, ", "), lastErr)
	}
	return int(n), nil
}

func httpGet(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}
