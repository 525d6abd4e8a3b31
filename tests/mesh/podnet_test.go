package mesh

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// podPID returns a process of the pod with this UID, found by its cgroup path as the node
// agent finds running pods (the kubelet's cgroupfs driver names the pod's cgroup pod<uid>).
// The cluster's nodes share the machine's PID namespace, so the test sees their processes.
func podPID(uid string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	marker := "/pod" + uid + "/"
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue // gone already
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line+"/", marker) {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no process of pod %s found under /proc", uid)
}

// podNetNS opens the network namespace of a running pod, so the test can open sockets inside
// it: such a socket is captured exactly like the app's own.
func podNetNS(pod *corev1.Pod) (*netns.Handle, error) {
	pid, err := podPID(string(pod.UID))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	h, err := netns.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: opening its netns: %w", pod.Namespace, pod.Name, err)
	}
	return h, nil
}

// inPodNetns runs a program of the machine (nft, ip) inside the pod's network namespace and
// returns its output.
func inPodNetns(pod *corev1.Pod, program string, args ...string) (string, error) {
	pid, err := podPID(string(pod.UID))
	if err != nil {
		return "", fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	cmd := exec.Command("nsenter", append([]string{fmt.Sprintf("--net=/proc/%d/ns/net", pid), program}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s in the netns of pod %s/%s: %w: %s", program, strings.Join(args, " "), pod.Namespace, pod.Name, err, out)
	}
	return string(out), nil
}

// echoConn is one TCP connection to the echo server's --tcp port, which first sends its
// identity as a JSON line, then echoes every byte.
type echoConn struct {
	net.Conn
	br *bufio.Reader
	// Pod and SourceAddr are from the identity line: who answered and whom it saw.
	Pod        string `json:"pod"`
	SourceAddr string `json:"sourceAddr"`
}

// dialEcho connects to addr from inside h and reads the server's identity line.
func dialEcho(ctx context.Context, h *netns.Handle, addr string) (*echoConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	e := &echoConn{Conn: conn, br: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := e.br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading the identity line from %s: %w", addr, err)
	}
	if err := json.Unmarshal(line, e); err != nil {
		conn.Close()
		return nil, fmt.Errorf("decoding the identity line %q from %s: %w", line, addr, err)
	}
	conn.SetDeadline(time.Time{})
	return e, nil
}

// roundTrip sends msg and reads it back.
func (e *echoConn) roundTrip(msg string) error {
	e.SetDeadline(time.Now().Add(5 * time.Second))
	defer e.SetDeadline(time.Time{})
	if _, err := io.WriteString(e, msg); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(e.br, buf); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo: got %q, want %q", buf, msg)
	}
	return nil
}

// echoOnce opens a new connection from h to addr, checks one round trip and closes it.
func echoOnce(ctx context.Context, h *netns.Handle, addr string) error {
	e, err := dialEcho(ctx, h, addr)
	if err != nil {
		return err
	}
	defer e.Close()
	return e.roundTrip("once")
}

// ztunnelLogs returns the name and the log of node's ztunnel.
func ztunnelLogs(ctx context.Context, t *testing.T, node string) (name, logs string) {
	t.Helper()
	zt, err := ztunnelPod(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	logs, err = c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	return zt.Name, logs
}

// ztunnelPod returns the one ztunnel pod of node that is not being deleted.
func ztunnelPod(ctx context.Context, node string) (*corev1.Pod, error) {
	return meshPod(ctx, "app=ztunnel", node)
}

// meshPod returns the one pod of the mesh matching selector on node that is not being deleted.
func meshPod(ctx context.Context, selector, node string) (*corev1.Pod, error) {
	list, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("listing pods %s on %s: %w", selector, node, err)
	}
	var live []*corev1.Pod
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			live = append(live, &list.Items[i])
		}
	}
	if len(live) != 1 {
		return nil, fmt.Errorf("pods %s on %s: %d not being deleted; want 1", selector, node, len(live))
	}
	return live[0], nil
}

// scrapeMetrics returns the lines of metric in the metrics of the ztunnel on node.
func scrapeMetrics(ctx context.Context, node, metric string) ([]string, error) {
	zt, err := ztunnelPod(ctx, node)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:15020/metrics", zt.Status.PodIP), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics of ztunnel %s: %w", zt.Name, err)
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), metric+"{") {
			lines = append(lines, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics of ztunnel %s: %w", zt.Name, err)
	}
	return lines, nil
}

// metricSum adds up the values of the lines that contain every one of want.
func metricSum(lines []string, want ...string) float64 {
	sum := 0.0
	for _, l := range lines {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if !all {
			continue
		}
		if v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// connectionsOpened is istio_tcp_connections_opened_total on node, summed over the lines
// with every one of want.
func connectionsOpened(ctx context.Context, node string, want ...string) (float64, error) {
	lines, err := scrapeMetrics(ctx, node, "istio_tcp_connections_opened_total")
	if err != nil {
		return 0, err
	}
	return metricSum(lines, want...), nil
}

// ztunnelAdmin GETs path from the admin endpoint of a ztunnel pod, which listens on
// localhost inside that pod's network namespace only.
func ztunnelAdmin(ctx context.Context, zt *corev1.Pod, path string) ([]byte, error) {
	h, err := podNetNS(zt)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s of ztunnel %s: %w", path, zt.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("admin %s of ztunnel %s: %w", path, zt.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s of ztunnel %s: %s: %s", path, zt.Name, resp.Status, b)
	}
	return b, nil
}

// isTimeout says whether err is a deadline expiring rather than the connection ending.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
