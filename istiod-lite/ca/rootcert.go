package ca

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The ConfigMap through which workloads find the mesh's trust root, as in Istio.
const (
	RootCertConfigMap    = "istio-ca-root-cert"
	RootCertConfigMapKey = "root-cert.pem"
	// ManagedByLabel (with value ManagedBy) marks the ConfigMaps PublishRoot maintains.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "istiod-lite"
)

// PublishOption configures PublishRoot.
type PublishOption func(*publisher)

// OnPublishError sets a function called (from PublishRoot's worker) with every failure to
// write a namespace's ConfigMap; the namespace is retried with backoff either way.
func OnPublishError(f func(namespace string, err error)) PublishOption {
	return func(p *publisher) { p.onError = f }
}

// PublishRoot keeps a ConfigMap istio-ca-root-cert whose root-cert.pem is rootPEM in every
// namespace: it creates it when a namespace appears or the ConfigMap is deleted, and
// restores it when it is edited. It blocks until ctx is cancelled, then returns after every
// goroutine it started has stopped; it returns an error only if ctx ends before its caches
// have synced.
//
// namespaces is a shared namespace informer that the caller starts (nil: PublishRoot runs
// its own). The ConfigMap informer, limited to that one name, is always PublishRoot's own.
func PublishRoot(ctx context.Context, client kubernetes.Interface, rootPEM []byte, namespaces cache.SharedIndexInformer, opts ...PublishOption) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	p := &publisher{
		client: client,
		root:   string(rootPEM),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "istio-ca-root-cert"}),
		onError: func(string, error) {},
	}
	for _, o := range opts {
		o(p)
	}

	var wg sync.WaitGroup
	// Stop order on return: no more events, then the queue, then wait for every goroutine.
	defer wg.Wait()
	defer p.queue.ShutDown()
	defer cancel()

	if namespaces == nil {
		namespaces = coreinformers.NewNamespaceInformer(client, 0, cache.Indexers{})
		wg.Go(func() { namespaces.RunWithContext(ctx) })
	}
	configMaps := coreinformers.NewFilteredConfigMapInformer(client, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootCertConfigMap).String()
		})
	p.namespaces, p.configMaps = namespaces.GetIndexer(), configMaps.GetIndexer()

	nsReg, err := namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.enqueueNamespace(obj) },
		UpdateFunc: func(_, obj any) { p.enqueueNamespace(obj) },
	})
	if err != nil {
		return fmt.Errorf("publishing root: watching namespaces: %w", err)
	}
	defer func() { _ = namespaces.RemoveEventHandler(nsReg) }()
	cmReg, err := configMaps.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.enqueueConfigMap(obj) },
		UpdateFunc: func(_, obj any) { p.enqueueConfigMap(obj) },
		DeleteFunc: func(obj any) { p.enqueueConfigMap(obj) },
	})
	if err != nil {
		return fmt.Errorf("publishing root: watching config maps: %w", err)
	}
	wg.Go(func() { configMaps.RunWithContext(ctx) })

	if !cache.WaitForCacheSync(ctx.Done(), namespaces.HasSynced, nsReg.HasSynced, configMaps.HasSynced, cmReg.HasSynced) {
		return fmt.Errorf("publishing root: caches did not sync: %w", context.Cause(ctx))
	}
	wg.Go(func() {
		for p.processNext(ctx) {
		}
	})
	<-ctx.Done()
	return nil
}

type publisher struct {
	client     kubernetes.Interface
	root       string
	namespaces cache.Indexer
	configMaps cache.Indexer
	queue      workqueue.TypedRateLimitingInterface[string] // namespace names
	onError    func(namespace string, err error)
}

func (p *publisher) enqueueNamespace(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		p.queue.Add(ns.Name)
	}
}

func (p *publisher) enqueueConfigMap(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	// The field selector is not honoured everywhere (fake clients); filter again.
	if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == RootCertConfigMap {
		p.queue.Add(cm.Namespace)
	}
}

func (p *publisher) processNext(ctx context.Context) bool {
	ns, shutdown := p.queue.Get()
	if shutdown {
		return false
	}
	defer p.queue.Done(ns)
	if err := p.reconcile(ctx, ns); err != nil {
		if ctx.Err() == nil { // failures while stopping are not worth reporting
			p.onError(ns, err)
		}
		p.queue.AddRateLimited(ns)
		return true
	}
	p.queue.Forget(ns)
	return true
}

// reconcile makes namespace ns's ConfigMap hold the root, creating it if needed.
func (p *publisher) reconcile(ctx context.Context, ns string) error {
	obj, ok, err := p.namespaces.GetByKey(ns)
	if err != nil {
		return fmt.Errorf("getting namespace %s from cache: %w", ns, err)
	}
	if n, isNS := obj.(*corev1.Namespace); !ok || !isNS || n.Status.Phase == corev1.NamespaceTerminating || n.DeletionTimestamp != nil {
		return nil
	}
	obj, ok, err = p.configMaps.GetByKey(ns + "/" + RootCertConfigMap)
	if err != nil {
		return fmt.Errorf("getting config map %s/%s from cache: %w", ns, RootCertConfigMap, err)
	}
	cm, isCM := obj.(*corev1.ConfigMap)
	if !ok || !isCM {
		_, err := p.client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: map[string]string{ManagedByLabel: ManagedBy}},
			Data:       map[string]string{RootCertConfigMapKey: p.root},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsNotFound(err) { // NotFound: the namespace went away
			return fmt.Errorf("creating config map %s/%s: %w", ns, RootCertConfigMap, err)
		}
		return nil
	}
	if cm.Data[RootCertConfigMapKey] == p.root && cm.Labels[ManagedByLabel] == ManagedBy {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Data[RootCertConfigMapKey] = p.root
	cm.Labels[ManagedByLabel] = ManagedBy
	if _, err := p.client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("updating config map %s/%s: %w", ns, RootCertConfigMap, err)
	}
	return nil
}
