// Package kube feeds istiod-lite's model from the Kubernetes API: informers for the objects
// the model reads, whose events become the model's Set and Delete calls.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
)

// Watcher runs the informers that keep a model.Index current.
type Watcher struct {
	client  kubernetes.Interface
	index   *model.Index
	log     *slog.Logger
	factory informers.SharedInformerFactory
	istio   istioinformers.SharedInformerFactory
	status  *statusWriter
	synced  []cache.InformerSynced
}

// NewWatcher prepares informers on client that update index, and on istio (when not nil) for
// the Istio security policies, whose status it writes; logger may be nil.
func NewWatcher(client kubernetes.Interface, istio istioclient.Interface, index *model.Index, logger *slog.Logger) (*Watcher, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{client: client, index: index, log: logger,
		factory: informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trim))}
	kinds := []struct {
		informer cache.SharedIndexInformer
		set      func(any) error
		del      func(ns, name string) error
	}{
		{w.factory.Core().V1().Pods().Informer(), func(o any) error { return index.SetPod(o.(*corev1.Pod)) }, index.DeletePod},
		{w.factory.Core().V1().Services().Informer(), func(o any) error { return index.SetService(o.(*corev1.Service)) }, index.DeleteService},
		{w.factory.Discovery().V1().EndpointSlices().Informer(), func(o any) error { return index.SetEndpointSlice(o.(*discoveryv1.EndpointSlice)) }, index.DeleteEndpointSlice},
		{w.factory.Core().V1().Nodes().Informer(), func(o any) error { return index.SetNode(o.(*corev1.Node)) }, func(_, name string) error { return index.DeleteNode(name) }},
	}
	for _, k := range kinds {
		reg, err := k.informer.AddEventHandler(w.handler(k.set, k.del))
		if err != nil {
			return nil, fmt.Errorf("watching: %w", err)
		}
		w.synced = append(w.synced, reg.HasSynced)
	}
	if istio != nil {
		if err := w.watchIstio(istio); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// handler turns informer events into model calls, logging the model's errors: one bad object
// must not stop the others.
func (w *Watcher) handler(set func(any) error, del func(ns, name string) error) cache.ResourceEventHandler {
	apply := func(what string, obj any, err error) {
		if err == nil {
			return
		}
		name := "?"
		if m, merr := meta.Accessor(obj); merr == nil {
			name = m.GetNamespace() + "/" + m.GetName()
		}
		w.log.Error("updating the model", "event", what, "object", name, "err", err)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { apply("add", obj, set(obj)) },
		UpdateFunc: func(_, obj any) { apply("update", obj, set(obj)) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			m, err := meta.Accessor(obj)
			if err != nil {
				apply("delete", obj, err)
				return
			}
			apply("delete", obj, del(m.GetNamespace(), m.GetName()))
		},
	}
}

// PodInformer is the shared pod informer, for components that index pods their own way (the
// CA looks pods up by node). Use it before Run.
func (w *Watcher) PodInformer() cache.SharedIndexInformer {
	return w.factory.Core().V1().Pods().Informer()
}

// NamespaceInformer is the shared namespace informer. Use it before Run.
func (w *Watcher) NamespaceInformer() cache.SharedIndexInformer {
	return w.factory.Core().V1().Namespaces().Informer()
}

// Run starts the informers and returns once they have synced; they stop when ctx ends.
func (w *Watcher) Run(ctx context.Context, timeout time.Duration) error {
	w.factory.Start(ctx.Done())
	if w.istio != nil {
		w.istio.Start(ctx.Done())
		go w.status.run(ctx)
	}
	syncCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), w.synced...) {
		return errors.New("the Kubernetes informers did not sync: is the API server reachable, are pods, services, endpointslices and nodes readable, and are the Istio CRDs (deploy/charts/base) installed?")
	}
	return nil
}

// Shutdown waits for the informers' goroutines after ctx has ended.
func (w *Watcher) Shutdown() {
	w.factory.Shutdown()
	if w.istio != nil {
		w.istio.Shutdown()
	}
}

// trim drops what the model never reads, so that large clusters cost less memory.
func trim(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
