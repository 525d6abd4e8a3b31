package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Labels ambitctl puts on what it creates, so uninstall finds it whatever values were used.
const (
	// ComponentLabel names the component (chart) an object belongs to.
	ComponentLabel = "install.ambit.dev/component"
	// NamespaceLabel marks the namespace ambitctl created (uninstall --purge removes it).
	NamespaceLabel = "install.ambit.dev/created-namespace"
	// fieldManager owns the fields ambitctl applies (server-side apply).
	fieldManager = "ambitctl"
)

// Kube is the cluster ambitctl works on.
type Kube struct {
	// Host is the API server's URL, for messages.
	Host    string
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Mapper  *restmapper.DeferredDiscoveryRESTMapper
	Config  *rest.Config
}

// NewKube makes the clients for cfg.
func NewKube(cfg *rest.Config) (*Kube, error) {
	cfg = rest.CopyConfig(cfg)
	// Listing every kind (Leftovers) touches deprecated ones; their warnings say nothing to
	// an ambitctl user.
	cfg.WarningHandler = rest.NoWarnings{}
	// client-go's default of 5 requests a second made the leftover check (a list per kind)
	// take half a minute.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating dynamic client: %w", err)
	}
	return &Kube{
		Host:    cfg.Host,
		Client:  cs,
		Dynamic: dyn,
		Mapper:  restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery())),
		Config:  cfg,
	}, nil
}

// Reachable checks that the API server answers, with a message that says what to check.
func (k *Kube) Reachable(ctx context.Context) (string, error) {
	v, err := k.Client.Discovery().ServerVersion()
	if err != nil {
		return "", fmt.Errorf("cannot reach the Kubernetes API server at %s: %w (check --kubeconfig or KUBECONFIG)", k.Host, err)
	}
	return v.GitVersion, nil
}

// decode splits a multi-document YAML into objects.
func Decode(doc string) ([]*unstructured.Unstructured, error) {
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(doc), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decoding YAML document %d: %w", i, err)
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("YAML document %d has no kind or apiVersion", i)
		}
		out = append(out, u)
	}
}

// resource returns the client for objects of gvk in namespace (ignored for cluster-scoped
// kinds), and whether the kind is namespaced.
func (k *Kube) resource(gvk schema.GroupVersionKind, namespace string) (dynamic.ResourceInterface, bool, error) {
	m, err := k.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		// A CRD applied a moment ago: read discovery again.
		k.Mapper.Reset()
		m, err = k.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, false, fmt.Errorf("finding the resource of %s: %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return k.Dynamic.Resource(m.Resource).Namespace(namespace), true, nil
	}
	return k.Dynamic.Resource(m.Resource), false, nil
}

// apply server-side applies obj, labelled as component's, in namespace unless it names one.
func (k *Kube) apply(ctx context.Context, component string, obj *unstructured.Unstructured) error {
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[ComponentLabel] = component
	obj.SetLabels(labels)
	ns := obj.GetNamespace()
	if ns == "" {
		ns = Namespace
	}
	ri, namespaced, err := k.resource(obj.GroupVersionKind(), ns)
	if err != nil {
		return err
	}
	if namespaced {
		obj.SetNamespace(ns)
	}
	if _, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
		return fmt.Errorf("applying %s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	return nil
}
