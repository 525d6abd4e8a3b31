package ca

import (
	"context"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
}

func TestPublishRoot(t *testing.T) {
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "own namespace informer", true: "shared namespace informer"}[shared]
		t.Run(name, func(t *testing.T) { testPublishRoot(t, shared) })
	}
}

func testPublishRoot(t *testing.T, shared bool) {
	testutil.CheckGoroutines(t, testTimeout)
	const root = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n"
	terminating := namespace("leaving")
	terminating.Status.Phase = corev1.NamespaceTerminating
	client := fake.NewClientset(
		namespace("default"), namespace("shop"), terminating,
		// A stale copy with an extra key the user added: the root is fixed, the key kept.
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: "shop"},
			Data:       map[string]string{RootCertConfigMapKey: "old root", "note": "mine"},
		},
		// Other ConfigMaps are none of our business.
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: "default"}, Data: map[string]string{"a": "b"}},
	)

	ctx, cancel := context.WithCancel(context.Background())
	var nsInformer cache.SharedIndexInformer
	factory := informers.NewSharedInformerFactory(client, 0)
	if shared {
		nsInformer = factory.Core().V1().Namespaces().Informer()
		factory.Start(ctx.Done())
	}
	var (
		mu     sync.Mutex // guards errs
		errs   []error
		done   = make(chan error, 1)
		cmGets = client.CoreV1().ConfigMaps
	)
	go func() {
		done <- PublishRoot(ctx, client, []byte(root), nsInformer, OnPublishError(func(ns string, err error) {
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
		}))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("PublishRoot: got %v, want nil after cancellation", err)
		}
		factory.Shutdown()
		mu.Lock()
		defer mu.Unlock()
		for _, err := range errs {
			t.Errorf("publish error: %v", err)
		}
	})

	published := func(ns string, extra map[string]string) func() bool {
		return func() bool {
			cm, err := cmGets(ns).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
			if err != nil || cm.Data[RootCertConfigMapKey] != root || cm.Labels[ManagedByLabel] != ManagedBy {
				return false
			}
			for k, v := range extra {
				if cm.Data[k] != v {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "the root in namespace default", published("default", nil))
	waitFor(t, "the fixed root in namespace shop, other keys kept", published("shop", map[string]string{"note": "mine"}))

	// A namespace created later gets it.
	if _, err := client.CoreV1().Namespaces().Create(ctx, namespace("later"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the root in the new namespace", published("later", nil))

	// An edit is undone.
	cm, err := cmGets("default").Get(ctx, RootCertConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[RootCertConfigMapKey] = "tampered"
	delete(cm.Labels, ManagedByLabel)
	if _, err := cmGets("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the edited ConfigMap restored", published("default", nil))

	// A deletion is undone.
	if err := cmGets("later").Delete(ctx, RootCertConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted ConfigMap recreated", published("later", nil))

	// Everything above has been processed by now; a terminating namespace got nothing and
	// the unrelated ConfigMap is untouched.
	if _, err := cmGets("leaving").Get(ctx, RootCertConfigMap, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace leaving (terminating): got a %s ConfigMap, want none", RootCertConfigMap)
	}
	other, err := cmGets("default").Get(ctx, "unrelated", metav1.GetOptions{})
	if err != nil || len(other.Data) != 1 || other.Data["a"] != "b" || len(other.Labels) != 0 {
		t.Errorf("unrelated ConfigMap: got %v (%v), want it untouched", other, err)
	}
}

func TestPublishRootCancelledBeforeSync(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	client := fake.NewClientset()
	// A shared informer nobody starts never syncs; cancellation must still end PublishRoot.
	ns := informers.NewSharedInformerFactory(client, 0).Core().V1().Namespaces().Informer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- PublishRoot(ctx, client, []byte("root"), ns) }()
	cancel()
	if err := <-done; err == nil {
		t.Errorf("PublishRoot cancelled before its caches synced: got nil, want an error")
	}
}
