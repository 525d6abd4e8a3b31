// Package mesh installs Ambit's L4 mesh (the istiod-lite, cni and ztunnel Helm charts, rendered
// by ambitctl's install package) on a test cluster and removes it again. Its tests check, in a real
// two-node cluster and with each capture backend, that enrolled pods talk through the
// ztunnels: mTLS identities on both ends, the client's real source address at the server,
// nothing in clear on the fabric, L4 policy at the destination (DENY, ALLOW, STRICT, open
// connections closed), how pods enter and leave the mesh (labels, opt-outs, host network,
// a new pod's first request), that agent and ztunnel restarts keep or restore captured
// traffic, that kubelet probes bypass ztunnel, and a clean uninstall.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/ambitctl/install"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

// Namespace is where the mesh's components run, as in Istio.
const Namespace = "istio-system"

// Options choose what Install deploys.
type Options struct {
	// Backend is the cni agent's redirection backend (auto, ebpf or nftables).
	Backend string
	// Timeout bounds each wait for a component (default 2 minutes).
	Timeout time.Duration
}

// Mesh is an installed mesh.
type Mesh struct {
	// IstiodIP is the ClusterIP of the istiod Service.
	IstiodIP string
	// manifests are the rendered charts in install order.
	manifests []string
	cni       int // index of the cni chart in manifests
	c         *cluster.Cluster
}

// images are the chart values that point at the images `make images` builds and the nodes
// import.
func image(name string) map[string]any {
	return map[string]any{"image": map[string]any{"repository": "ambit.local/" + name, "tag": "dev", "pullPolicy": "Never"}}
}

func render(chart string, values map[string]any) (string, error) {
	m, err := install.RenderComponent(chart, values)
	if err != nil {
		return "", err
	}
	return m.YAML(), nil
}

// Install puts the Istio CRDs, istiod-lite, the cni node agent and ztunnel on c, and returns
// once every one of their pods is Ready. A component that does not come up fails Install with
// its pods' state and logs.
func Install(ctx context.Context, c *cluster.Cluster, opts Options) (*Mesh, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Backend == "" {
		opts.Backend = "auto"
	}
	m := &Mesh{c: c}
	if err := c.InstallIstioCRDs(ctx); err != nil {
		return m, err
	}
	if err := c.CreateNamespace(ctx, Namespace, nil); err != nil {
		return m, err
	}
	if err := m.apply(ctx, install.IstiodLite, image("istiod-lite")); err != nil {
		return m, err
	}
	if _, err := c.WaitForDeployment(ctx, Namespace, "istiod", opts.Timeout); err != nil {
		return m, fmt.Errorf("istiod-lite not ready: %w%s", err, Diagnose(ctx, c, "app=istiod"))
	}
	svc, err := c.Client.CoreV1().Services(Namespace).Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		return m, fmt.Errorf("getting the istiod Service: %w", err)
	}
	m.IstiodIP = svc.Spec.ClusterIP

	if err := m.apply(ctx, install.CNI, cniValues(opts.Backend)); err != nil {
		return m, err
	}
	// The test cluster has no DNS: ztunnel reaches istiod-lite by its ClusterIP and still
	// checks the certificate's name.
	ztValues := image("ztunnel")
	ztValues["xdsAddress"] = m.IstiodIP + ":15012"
	ztValues["caAddress"] = m.IstiodIP + ":15012"
	if err := m.apply(ctx, install.Ztunnel, ztValues); err != nil {
		return m, err
	}
	for _, ds := range []struct{ name, selector string }{{"istio-cni-node", "k8s-app=istio-cni-node"}, {"ztunnel", "app=ztunnel"}} {
		if _, err := c.WaitForDaemonSet(ctx, Namespace, ds.name, opts.Timeout); err != nil {
			return m, fmt.Errorf("DaemonSet %s not ready: %w%s", ds.name, err, Diagnose(ctx, c, ds.selector))
		}
	}
	return m, nil
}

func cniValues(backend string) map[string]any {
	v := image("cni-agent")
	v["backend"] = backend
	return v
}

// SetBackend switches the cni agents to another redirection backend, as `helm upgrade` of the
// cni chart would, and returns once the new agents are Ready. Pods enrolled before keep the
// old backend's redirection until they end.
func (m *Mesh) SetBackend(ctx context.Context, backend string, timeout time.Duration) error {
	doc, err := render(install.CNI, cniValues(backend))
	if err != nil {
		return err
	}
	if err := m.c.Apply(ctx, Namespace, doc); err != nil {
		return fmt.Errorf("applying chart %s: %w", install.CNI, err)
	}
	m.manifests[m.cni] = doc
	if _, err := m.c.WaitForDaemonSet(ctx, Namespace, "istio-cni-node", timeout); err != nil {
		return fmt.Errorf("DaemonSet istio-cni-node not ready with backend %s: %w%s", backend, err, Diagnose(ctx, m.c, "k8s-app=istio-cni-node"))
	}
	return nil
}

func (m *Mesh) apply(ctx context.Context, chart string, values map[string]any) error {
	doc, err := render(chart, values)
	if err != nil {
		return err
	}
	if chart == install.CNI {
		m.cni = len(m.manifests)
	}
	m.manifests = append(m.manifests, doc)
	if err := m.c.Apply(ctx, Namespace, doc); err != nil {
		return fmt.Errorf("applying chart %s: %w", chart, err)
	}
	return nil
}

// Uninstall removes what Install made, newest first, and what istiod-lite made at run time
// (its CA Secret, the root certificate ConfigMaps), then the namespace; it returns once the
// namespace is gone. The CRDs stay, as with `istioctl uninstall` without --purge.
func (m *Mesh) Uninstall(ctx context.Context) error {
	var errs []error
	for _, doc := range slices.Backward(m.manifests) {
		if err := m.c.Delete(ctx, Namespace, doc); err != nil {
			errs = append(errs, err)
		}
	}
	// The root certificate istiod-lite published in every namespace.
	nss, err := m.c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		errs = append(errs, err)
	} else {
		for _, ns := range nss.Items {
			err := m.c.Client.CoreV1().ConfigMaps(ns.Name).Delete(ctx, "istio-ca-root-cert", metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
	}
	if err := m.c.DeleteNamespace(ctx, Namespace); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Diagnose describes the mesh pods matching selector: their state, then the last lines of
// each container's log (and of the previous instance's, after a restart), for failure
// messages.
func Diagnose(ctx context.Context, c *cluster.Cluster, selector string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	pods, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return "\n  (listing pods: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "\n  pod %s on %s: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		if problem := cluster.PodProblem(&p); problem != "" {
			fmt.Fprintf(&b, " (%s)", problem)
		}
		for _, s := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "\n  container %s: ready %v, restarts %d", s.Name, s.Ready, s.RestartCount)
			if s.RestartCount > 0 {
				b.WriteString(tailLog(ctx, c, p.Name, s.Name, true))
			}
			b.WriteString(tailLog(ctx, c, p.Name, s.Name, false))
		}
	}
	return b.String()
}

func tailLog(ctx context.Context, c *cluster.Cluster, pod, container string, previous bool) string {
	lines := int64(40)
	raw, err := c.Client.CoreV1().Pods(Namespace).GetLogs(pod, &corev1.PodLogOptions{Container: container, Previous: previous, TailLines: &lines}).DoRaw(ctx)
	what := "log"
	if previous {
		what = "previous instance's log"
	}
	if err != nil {
		return fmt.Sprintf("\n    (%s: %v)", what, err)
	}
	return fmt.Sprintf("\n    %s:\n      %s", what, strings.ReplaceAll(strings.TrimSpace(string(raw)), "\n", "\n      "))
}
