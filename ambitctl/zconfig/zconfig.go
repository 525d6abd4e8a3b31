// Package zconfig reads what ztunnels know from their admin endpoint (localhost:15000 inside
// each ztunnel pod, reached through the API server's port forwarding) and prints it as tables,
// for `ambitctl ztunnel-config`.
package zconfig

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Sections are the config dump sections ztunnel-config shows.
var Sections = []string{"workloads", "services", "policies", "certificates"}

// adminPort is ztunnel's admin endpoint inside its pod (localhost only).
const adminPort = 15000

// Client finds ztunnel pods and reads their config dumps.
type Client struct {
	Kube   kubernetes.Interface
	Config *rest.Config
	// Namespace and Selector find the ztunnel pods (default istio-system, app=ztunnel).
	Namespace, Selector string
}

// Pods returns the running ztunnel pods, only the one on node if node is not empty.
func (c Client) Pods(ctx context.Context, node string) ([]corev1.Pod, error) {
	ns, sel := c.Namespace, c.Selector
	if ns == "" {
		ns = "istio-system"
	}
	if sel == "" {
		sel = "app=ztunnel"
	}
	list, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing ztunnel pods (%s in %s): %w", sel, ns, err)
	}
	var out, all []corev1.Pod
	for _, p := range list.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		all = append(all, p)
		if node == "" || p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Pod) int { return strings.Compare(a.Spec.NodeName, b.Spec.NodeName) })
	if len(out) == 0 {
		if node != "" {
			nodes := make([]string, len(all))
			for i, p := range all {
				nodes[i] = p.Spec.NodeName
			}
			return nil, fmt.Errorf("no running ztunnel on node %q; ztunnels run on: %s", node, strings.Join(nodes, ", "))
		}
		return nil, fmt.Errorf("no running ztunnel pod (%s in %s): is Ambit installed (ambitctl install)?", sel, ns)
	}
	return out, nil
}

// Dump returns the config dump section of pod's ztunnel, as JSON.
func (c Client) Dump(ctx context.Context, pod corev1.Pod, section string) ([]byte, error) {
	if !slices.Contains(Sections, section) {
		return nil, fmt.Errorf("section %q: want one of %s", section, strings.Join(Sections, ", "))
	}
	port, stop, err := c.forward(ctx, pod)
	if err != nil {
		return nil, err
	}
	defer stop()
	u := fmt.Sprintf("http://127.0.0.1:%d/config_dump?section=%s", port, url.QueryEscape(section))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading ztunnel %s's config dump: %w", pod.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading ztunnel %s's config dump: %w", pod.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ztunnel %s's config dump: %s: %s", pod.Name, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// forward opens a port forward to pod's admin port on a free local loopback port.
func (c Client) forward(ctx context.Context, pod corev1.Pod) (uint16, func(), error) {
	transport, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		return 0, nil, fmt.Errorf("port forwarding: %w", err)
	}
	target := c.Kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, target)
	stopCh, readyCh := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", adminPort)}, stopCh, readyCh, io.Discard, &errOut)
	if err != nil {
		return 0, nil, fmt.Errorf("port forwarding to %s: %w", pod.Name, err)
	}
	failed := make(chan error, 1)
	go func() { failed <- pf.ForwardPorts() }()
	stop := func() {
		close(stopCh)
		<-failed
	}
	select {
	case <-readyCh:
	case err := <-failed:
		return 0, nil, fmt.Errorf("port forwarding to ztunnel %s: %w %s", pod.Name, err, errOut.String())
	case <-ctx.Done():
		stop()
		return 0, nil, ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) == 0 {
		stop()
		return 0, nil, fmt.Errorf("port forwarding to ztunnel %s: no local port: %v", pod.Name, err)
	}
	return ports[0].Local, stop, nil
}
