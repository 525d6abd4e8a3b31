package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Options tune an install or uninstall.
type Options struct {
	// Timeout bounds the wait for each component (default 5 minutes).
	Timeout time.Duration
	// Out receives the progress lines (default: discarded).
	Out io.Writer
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return o
}

// istiodService is the Service of istiod-lite in Namespace; ztunnel's xDS and CA address.
const istiodService = "istiod"

// Install applies the components s enables, in order, and waits for each to be ready before
// the next. It stops at the first component that fails, with what its pods report.
func Install(ctx context.Context, k *Kube, s Settings, opts Options) error {
	opts = opts.withDefaults()
	version, err := k.Reachable(ctx)
	if err != nil {
		return err
	}
	comps := s.Components()
	fmt.Fprintf(opts.Out, "Installing Ambit (profile %s: %s) into %s on %s (Kubernetes %s)\n",
		s.Profile, strings.Join(comps, ", "), Namespace, k.Host, version)
	if err := ensureNamespace(ctx, k); err != nil {
		return err
	}
	began := time.Now()
	for _, comp := range comps {
		if err := installComponent(ctx, k, s, comp, opts); err != nil {
			return fmt.Errorf("installing %s: %w", comp, err)
		}
	}
	fmt.Fprintf(opts.Out, "Ambit is installed (%.1fs). Enrol a namespace with: kubectl label namespace NAME istio.io/dataplane-mode=ambient\n", time.Since(began).Seconds())
	return nil
}

func ensureNamespace(ctx context.Context, k *Kube) error {
	_, err := k.Client.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading namespace %s: %w", Namespace, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: map[string]string{NamespaceLabel: "true"}}}
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", Namespace, err)
	}
	return nil
}

func installComponent(ctx context.Context, k *Kube, s Settings, comp string, opts Options) error {
	began := time.Now()
	values := s.chartValues(comp)
	switch comp {
	case GatewayAPI:
		if owner, found, err := crdOwner(ctx, k, "gateways.gateway.networking.k8s.io"); err != nil {
			return err
		} else if found && owner != GatewayAPI {
			fmt.Fprintf(opts.Out, "  - %-12s the cluster has the Gateway API CRDs already: left as they are\n", comp)
			return nil
		}
	case Ztunnel:
		note, err := istiodAddress(ctx, k, s, values)
		if err != nil {
			return err
		}
		if note != "" {
			fmt.Fprintf(opts.Out, "  - %-12s %s\n", comp, note)
		}
	}
	m, err := RenderComponent(comp, values)
	if err != nil {
		return err
	}
	objs, err := Decode(m.YAML())
	if err != nil {
		return fmt.Errorf("rendered chart %s: %w", comp, err)
	}
	for _, obj := range objs {
		if err := k.apply(ctx, comp, obj); err != nil {
			return err
		}
	}
	what, err := waitReady(ctx, k, objs, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.Out, "  ✔ %-12s %s (%.1fs)\n", comp, what, time.Since(began).Seconds())
	return nil
}

// crdOwner reports whether the CRD name exists and which component installed it ("" when not
// ambitctl).
func crdOwner(ctx context.Context, k *Kube, name string) (string, bool, error) {
	crd, err := k.Dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading CRD %s: %w", name, err)
	}
	return crd.GetLabels()[ComponentLabel], true, nil
}

// istiodAddress points ztunnel at istiod-lite's ClusterIP when the cluster has no DNS Service
// (kube-system/kube-dns) and the user did not choose the addresses, since the chart's default
// is a DNS name. It returns a note saying so.
func istiodAddress(ctx context.Context, k *Kube, s Settings, values map[string]any) (string, error) {
	user := s.Values[Ztunnel]
	if _, ok := user["xdsAddress"]; ok {
		return "", nil
	}
	if _, ok := user["caAddress"]; ok {
		return "", nil
	}
	_, err := k.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err == nil {
		return "", nil
	}
	if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("looking for the cluster DNS Service kube-system/kube-dns: %w", err)
	}
	svc, err := k.Client.CoreV1().Services(Namespace).Get(ctx, istiodService, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("the cluster has no DNS (no Service kube-system/kube-dns), so ztunnel needs istiod-lite's ClusterIP, but reading Service %s/%s failed: %w; install istiod-lite first or set values.ztunnel.xdsAddress and values.ztunnel.caAddress", Namespace, istiodService, err)
	}
	addr := svc.Spec.ClusterIP + ":15012"
	values["xdsAddress"], values["caAddress"] = addr, addr
	return "no cluster DNS (no Service kube-system/kube-dns): ztunnel reaches istiod-lite at " + addr, nil
}

// waitReady waits until the CRDs among objs are established and their Deployments and
// DaemonSets are ready, and says what it waited for.
func waitReady(ctx context.Context, k *Kube, objs []*unstructured.Unstructured, opts Options) (string, error) {
	var crds, workloads []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "CustomResourceDefinition":
			crds = append(crds, o)
		case "Deployment", "DaemonSet":
			workloads = append(workloads, o)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	var done []string
	if len(crds) > 0 {
		if err := waitCRDs(ctx, k, crds); err != nil {
			return "", err
		}
		k.Mapper.Reset()
		done = append(done, fmt.Sprintf("%d CRDs established", len(crds)))
	}
	for _, w := range workloads {
		summary, err := waitWorkload(ctx, k, w, opts)
		if err != nil {
			return "", err
		}
		done = append(done, summary)
	}
	if len(done) == 0 {
		return fmt.Sprintf("%d objects applied", len(objs)), nil
	}
	return strings.Join(done, ", "), nil
}

func waitCRDs(ctx context.Context, k *Kube, crds []*unstructured.Unstructured) error {
	pending := map[string]bool{}
	for _, c := range crds {
		pending[c.GetName()] = true
	}
	return poll(ctx, time.Second, func() (bool, error) {
		for name := range pending {
			crd, err := k.Dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				continue
			}
			if conditionTrue(crd, "Established") {
				delete(pending, name)
			}
		}
		return len(pending) == 0, nil
	}, func() error {
		return fmt.Errorf("CRDs not established after the timeout: %s", strings.Join(slices.Sorted(maps.Keys(pending)), ", "))
	})
}

// conditionTrue reports whether obj's status has condition typ with status True.
func conditionTrue(obj *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// poll calls check every interval until it reports done or fails, or ctx ends; then it
// returns timeout()'s error.
func poll(ctx context.Context, interval time.Duration, check func() (bool, error), timeout func() error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.Canceled) {
				return ctx.Err()
			}
			return timeout()
		case <-t.C:
		}
	}
}
