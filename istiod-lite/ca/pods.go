package ca

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
)

// PodLister answers the two questions impersonation needs. Implementations read a cache:
// the CA must not list pods from the API server per request.
type PodLister interface {
	// PodsOnNode returns the pods whose spec.nodeName is node.
	PodsOnNode(node string) ([]*corev1.Pod, error)
	// Pod returns one pod, or an error satisfying apierrors.IsNotFound.
	Pod(namespace, name string) (*corev1.Pod, error)
}

// NodeNameIndex is the name of the pod informer index InformerPodLister adds.
const NodeNameIndex = "spec.nodeName"

// InformerPodLister is a PodLister over a shared pod informer, indexed by spec.nodeName.
type InformerPodLister struct {
	indexer cache.Indexer
}

// NewInformerPodLister adds the node-name index to pods (a pod informer, e.g. from
// informers.SharedInformerFactory.Core().V1().Pods().Informer()) and returns a lister over it.
// Call it before the informer starts; the caller starts the informer and waits for it to
// sync before serving.
func NewInformerPodLister(pods cache.SharedIndexInformer) (*InformerPodLister, error) {
	if _, ok := pods.GetIndexer().GetIndexers()[NodeNameIndex]; !ok {
		err := pods.AddIndexers(cache.Indexers{NodeNameIndex: func(obj any) ([]string, error) {
			p, ok := obj.(*corev1.Pod)
			if !ok || p.Spec.NodeName == "" {
				return nil, nil
			}
			return []string{p.Spec.NodeName}, nil
		}})
		if err != nil {
			return nil, fmt.Errorf("adding pod index %s: %w", NodeNameIndex, err)
		}
	}
	return &InformerPodLister{indexer: pods.GetIndexer()}, nil
}

// PodsOnNode implements PodLister.
func (l *InformerPodLister) PodsOnNode(node string) ([]*corev1.Pod, error) {
	objs, err := l.indexer.ByIndex(NodeNameIndex, node)
	if err != nil {
		return nil, fmt.Errorf("listing pods on node %s: %w", node, err)
	}
	pods := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

// Pod implements PodLister.
func (l *InformerPodLister) Pod(namespace, name string) (*corev1.Pod, error) {
	obj, ok, err := l.indexer.GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, fmt.Errorf("getting pod %s/%s: %w", namespace, name, err)
	}
	p, isPod := obj.(*corev1.Pod)
	if !ok || !isPod {
		return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	return p, nil
}
