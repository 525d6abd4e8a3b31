package cluster

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WaitServiceRouted waits until Service namespace/name has n ready endpoints and every node's
// kube-proxy has programmed all of them, and returns the Service. Ready endpoints in the API
// are not enough: kube-proxy writes its rules a moment later, and until then a connection to
// the ClusterIP is refused ("has no endpoints") or reaches only some of the endpoints.
func (c *Cluster) WaitServiceRouted(ctx context.Context, namespace, name string, n int, timeout time.Duration) (*corev1.Service, error) {
	var svc *corev1.Service
	var missing string
	what := fmt.Sprintf("Service %s/%s with %d ready endpoints programmed by every node's kube-proxy", namespace, name, n)
	err := c.Wait(ctx, timeout, what, func(ctx context.Context) (bool, error) {
		s, err := c.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			missing = err.Error()
			return false, nil
		}
		slices, err := c.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
		if err != nil {
			missing = err.Error()
			return false, nil
		}
		dests, ready := readyDestinations(slices.Items)
		if ready != n {
			missing = fmt.Sprintf("%d ready endpoints: %v", ready, dests)
			return false, nil
		}
		for _, node := range c.Nodes {
			rules, err := node.sb.command("iptables-save", "-t", "nat").Output()
			if err != nil {
				return false, fmt.Errorf("reading node %s's nat rules: %w", node.Name, err)
			}
			if m := unprogrammed(string(rules), namespace+"/"+name, dests); len(m) > 0 {
				missing = fmt.Sprintf("node %s's kube-proxy has no DNAT to %v yet", node.Name, m)
				return false, nil
			}
		}
		svc = s
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w (last seen: %s)", err, missing)
	}
	return svc, nil
}

// readyDestinations lists "ip:port" for every ready endpoint and port of the slices, sorted,
// and counts the ready endpoints.
func readyDestinations(slices []discoveryv1.EndpointSlice) (dests []string, ready int) {
	for _, s := range slices {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || !*e.Conditions.Ready {
				continue
			}
			ready++
			for _, p := range s.Ports {
				if p.Port == nil {
					continue
				}
				for _, a := range e.Addresses {
					dests = append(dests, net.JoinHostPort(a, strconv.Itoa(int(*p.Port))))
				}
			}
		}
	}
	sort.Strings(dests)
	return dests, ready
}

// unprogrammed returns the destinations that the iptables-save output rules has no kube-proxy
// DNAT rule for. kube-proxy comments each endpoint's rule with the service port's name,
// "namespace/name" or "namespace/name:port".
func unprogrammed(rules, service string, dests []string) []string {
	have := map[string]bool{}
	for _, line := range strings.Split(rules, "\n") {
		_, comment, ok := strings.Cut(line, "--comment ")
		if !ok {
			continue
		}
		if quoted, ok := strings.CutPrefix(comment, `"`); ok {
			comment, _, _ = strings.Cut(quoted, `"`)
		} else {
			comment, _, _ = strings.Cut(comment, " ")
		}
		if comment != service && !strings.HasPrefix(comment, service+":") {
			continue
		}
		if _, after, ok := strings.Cut(line, "--to-destination "); ok {
			have[strings.Fields(after)[0]] = true
		}
	}
	var missing []string
	for _, d := range dests {
		if !have[d] {
			missing = append(missing, d)
		}
	}
	return missing
}
