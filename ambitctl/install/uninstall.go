package install

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
)

// istiodManaged selects what istiod-lite creates at run time: the root certificate ConfigMap
// in every namespace and its self-signed CA Secret.
const istiodManaged = "app.kubernetes.io/managed-by=istiod-lite"

// caSecret is the Secret that holds istiod-lite's self-signed CA; a plain uninstall keeps it
// so that a reinstall keeps the mesh's root.
const caSecret = "istio-ca-secret"

// uninstallOrder removes the node agent first, so pods go back to direct traffic before
// ztunnel stops, then ztunnel, then the control plane and the CRDs.
var uninstallOrder = []string{CNI, Ztunnel, IstiodLite, GatewayAPI, Base}

// Uninstall removes what ambitctl installed (found by its labels, whatever values were used).
// Without purge the CRDs, the Istio resources users made, istiod-lite's CA Secret and the
// namespace stay; with purge they go too (the Gateway API CRDs only if ambitctl installed
// them, the namespace only if it created it).
func Uninstall(ctx context.Context, k *Kube, purge bool, opts Options) error {
	opts = opts.withDefaults()
	if _, err := k.Reachable(ctx); err != nil {
		return err
	}
	kinds, err := installedKinds(k)
	if err != nil {
		return err
	}
	mode := "keeping the CRDs and your Istio resources"
	if purge {
		mode = "with --purge: the CRDs and every Istio resource go too"
	}
	fmt.Fprintf(opts.Out, "Removing Ambit from %s (%s)\n", k.Host, mode)
	for _, comp := range uninstallOrder {
		if !purge && (comp == Base || comp == GatewayAPI) {
			continue
		}
		if err := removeComponent(ctx, k, comp, kinds, opts); err != nil {
			return fmt.Errorf("removing %s: %w", comp, err)
		}
		if comp == IstiodLite {
			if err := removeIstiodObjects(ctx, k, purge); err != nil {
				return err
			}
		}
	}
	if purge {
		if err := removeNamespace(ctx, k, opts); err != nil {
			return err
		}
	}
	fmt.Fprintln(opts.Out, "Ambit is removed.")
	return nil
}

// installedKinds are the resources the charts make, from rendering all of them.
func installedKinds(k *Kube) ([]schema.GroupVersionResource, error) {
	var out []schema.GroupVersionResource
	for _, comp := range Order {
		m, err := RenderComponent(comp, nil)
		if err != nil {
			return nil, err
		}
		objs, err := Decode(m.YAML())
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			gvk := o.GroupVersionKind()
			mapping, err := k.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				continue // a kind this cluster does not serve has no objects to remove
			}
			if !slices.Contains(out, mapping.Resource) {
				out = append(out, mapping.Resource)
			}
		}
	}
	return out, nil
}

// labelled lists the objects of kinds carrying selector, in every namespace.
func labelled(ctx context.Context, k *Kube, kinds []schema.GroupVersionResource, selector string) ([]unstructured.Unstructured, error) {
	var out []unstructured.Unstructured
	for _, gvr := range kinds {
		list, err := k.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", gvr.Resource, err)
		}
		for _, o := range list.Items {
			o.SetAPIVersion(gvr.GroupVersion().String())
			out = append(out, o)
		}
	}
	return out, nil
}

func removeComponent(ctx context.Context, k *Kube, comp string, kinds []schema.GroupVersionResource, opts Options) error {
	began := time.Now()
	objs, err := labelled(ctx, k, kinds, ComponentLabel+"="+comp)
	if err != nil {
		return err
	}
	if len(objs) == 0 {
		return nil
	}
	// Workloads first, and wait for their pods to end: the node agent cleans each node up as
	// it stops, and needs its RBAC to do so.
	isWorkload := func(o unstructured.Unstructured) bool {
		return o.GetKind() == "Deployment" || o.GetKind() == "DaemonSet"
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	var workloads []string
	for _, o := range objs {
		if !isWorkload(o) {
			continue
		}
		sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
		if err := deleteObject(ctx, k, o); err != nil {
			return err
		}
		if err := waitPodsGone(ctx, k, o.GetNamespace(), sel, o.GetKind()+" "+o.GetName()); err != nil {
			return err
		}
		workloads = append(workloads, o.GetKind()+" "+o.GetName())
	}
	for _, o := range slices.Backward(objs) {
		if isWorkload(o) {
			continue
		}
		if err := deleteObject(ctx, k, o); err != nil {
			return err
		}
	}
	// A delete only starts the removal: a CRD goes once its custom resources are gone, and
	// foreground deletion waits for dependents. Removed means no longer listed.
	if err := waitObjectsGone(ctx, k, kinds, comp); err != nil {
		return err
	}
	what := fmt.Sprintf("%d objects removed", len(objs))
	if len(workloads) > 0 {
		what = fmt.Sprintf("%s and its pods, %d objects in all, removed", strings.Join(workloads, ", "), len(objs))
	}
	fmt.Fprintf(opts.Out, "  ✔ %-12s %s (%.1fs)\n", comp, what, time.Since(began).Seconds())
	return nil
}

func deleteObject(ctx context.Context, k *Kube, o unstructured.Unstructured) error {
	ri, _, err := k.resource(o.GroupVersionKind(), o.GetNamespace())
	if err != nil {
		return err
	}
	fg := metav1.DeletePropagationForeground
	err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &fg})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting %s %s: %w", o.GetKind(), o.GetName(), err)
	}
	return nil
}

func waitPodsGone(ctx context.Context, k *Kube, ns string, sel map[string]string, what string) error {
	if len(sel) == 0 {
		return nil
	}
	selector := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: sel})
	var left []corev1.Pod
	return poll(ctx, 500*time.Millisecond, func() (bool, error) {
		list, err := k.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		left = list.Items
		return len(left) == 0, nil
	}, func() error {
		names := make([]string, len(left))
		for i, p := range left {
			names[i] = p.Name + " on " + p.Spec.NodeName
		}
		return fmt.Errorf("the pods of %s did not end: %s", what, strings.Join(names, ", "))
	})
}

// waitObjectsGone waits until no object of kinds carries comp's label.
func waitObjectsGone(ctx context.Context, k *Kube, kinds []schema.GroupVersionResource, comp string) error {
	var left []unstructured.Unstructured
	return poll(ctx, 250*time.Millisecond, func() (bool, error) {
		objs, err := labelled(ctx, k, kinds, ComponentLabel+"="+comp)
		if err != nil {
			return false, nil // the next poll, or the timeout, tells
		}
		left = objs
		for _, o := range left {
			if o.GetKind() == "CustomResourceDefinition" && o.GetDeletionTimestamp() != nil {
				releaseEmptyCRD(ctx, k, o)
			}
		}
		return len(left) == 0, nil
	}, func() error {
		names := make([]string, len(left))
		for i, o := range left {
			names[i] = o.GetKind() + " " + objectName(o)
			if o.GetDeletionTimestamp() != nil {
				names[i] += fmt.Sprintf(" (deleting, finalizers %v)", o.GetFinalizers())
			}
		}
		return fmt.Errorf("still there after the delete: %s; see what holds them with kubectl get -o yaml", strings.Join(names, ", "))
	})
}

// crdCleanup is the API server's finalizer on a CRD being deleted: it deletes the CRD's
// custom resources, then lets the CRD go.
const crdCleanup = "customresourcecleanup.apiextensions.k8s.io"

// releaseEmptyCRD removes crdCleanup from the terminating CRD crd once a list of its custom
// resources, read from etcd, finds none: there is nothing left for the finalizer to delete.
// The API server's own finalizer lists them through the CRD's watch cache, which is rebuilt
// when the CRD changes; a list during the rebuild fails ("storage is (re)initializing") and
// the finalizer retries with a growing backoff, so a CRD deleted soon after it was made can
// stay for minutes. Any error leaves the CRD to the API server and the next poll.
func releaseEmptyCRD(ctx context.Context, k *Kube, crd unstructured.Unstructured) {
	if !slices.Contains(crd.GetFinalizers(), crdCleanup) {
		return
	}
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	var version string
	for _, v := range versions {
		if m, ok := v.(map[string]any); ok && m["served"] == true {
			version, _ = m["name"].(string)
			break
		}
	}
	if group == "" || plural == "" || version == "" {
		return
	}
	// No resourceVersion: a consistent read, from etcd when the cache is not ready.
	list, err := k.Dynamic.Resource(schema.GroupVersionResource{Group: group, Version: version, Resource: plural}).
		List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil || len(list.Items) > 0 {
		return
	}
	crd.SetFinalizers(slices.DeleteFunc(slices.Clone(crd.GetFinalizers()), func(f string) bool { return f == crdCleanup }))
	// The update carries crd's resourceVersion: if anything changed meanwhile it is refused.
	k.Dynamic.Resource(crdResource).Update(ctx, &crd, metav1.UpdateOptions{})
}

// removeIstiodObjects deletes the root certificate ConfigMaps istiod-lite published and, with
// purge, its CA Secret.
func removeIstiodObjects(ctx context.Context, k *Kube, purge bool) error {
	cms, err := k.Client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{LabelSelector: istiodManaged})
	if err != nil {
		return fmt.Errorf("listing istiod-lite's ConfigMaps: %w", err)
	}
	var errs []error
	for _, cm := range cms.Items {
		if err := k.Client.CoreV1().ConfigMaps(cm.Namespace).Delete(ctx, cm.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err))
		}
	}
	if purge {
		err := k.Client.CoreV1().Secrets(Namespace).Delete(ctx, caSecret, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting Secret %s/%s: %w", Namespace, caSecret, err))
		}
	}
	return errors.Join(errs...)
}

func removeNamespace(ctx context.Context, k *Kube, opts Options) error {
	ns, err := k.Client.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading namespace %s: %w", Namespace, err)
	}
	if ns.Labels[NamespaceLabel] != "true" {
		fmt.Fprintf(opts.Out, "  - namespace %s was there before Ambit: left in place\n", Namespace)
		return nil
	}
	began := time.Now()
	if err := k.Client.CoreV1().Namespaces().Delete(ctx, Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", Namespace, err)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	err = poll(ctx, 500*time.Millisecond, func() (bool, error) {
		_, err := k.Client.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}, func() error { return fmt.Errorf("namespace %s still terminating after %s", Namespace, opts.Timeout) })
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.Out, "  ✔ namespace    %s removed (%.1fs)\n", Namespace, time.Since(began).Seconds())
	return nil
}

// Leftovers lists what of Ambit is still on the cluster: objects with ambitctl's or
// istiod-lite's labels of any kind the server lists, the Istio CRDs, and the namespace
// ambitctl created. After `uninstall --purge` it is empty.
func Leftovers(ctx context.Context, k *Kube) ([]string, error) {
	lists, err := k.Client.Discovery().ServerPreferredResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, fmt.Errorf("discovering the server's resources: %w", err)
	}
	var kinds []schema.GroupVersionResource
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			if slices.Contains(r.Verbs, "list") && !strings.Contains(r.Name, "/") {
				kinds = append(kinds, gv.WithResource(r.Name))
			}
		}
	}
	// Every kind for ambitctl's and istiod-lite's labels, a few lists at a time (a cluster
	// serves about 60 kinds); NamespaceLabel is only ever on a Namespace.
	type query struct {
		gvr      schema.GroupVersionResource
		selector string
	}
	var queries []query
	for _, gvr := range kinds {
		queries = append(queries, query{gvr, ComponentLabel}, query{gvr, istiodManaged})
	}
	queries = append(queries, query{schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, NamespaceLabel})
	found := make([][]string, len(queries))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, q := range queries {
		g.Go(func() error {
			objs, err := labelled(gctx, k, []schema.GroupVersionResource{q.gvr}, q.selector)
			for _, o := range objs {
				found[i] = append(found[i], fmt.Sprintf("%s %s (label %s)", o.GetKind(), objectName(o), q.selector))
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []string
	for _, f := range found {
		out = append(out, f...)
	}
	crds, err := k.Dynamic.Resource(crdResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing CRDs: %w", err)
	}
	for _, c := range crds.Items {
		if strings.HasSuffix(c.GetName(), ".istio.io") {
			out = append(out, "CustomResourceDefinition "+c.GetName())
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func objectName(o unstructured.Unstructured) string {
	if o.GetNamespace() != "" {
		return o.GetNamespace() + "/" + o.GetName()
	}
	return o.GetName()
}
