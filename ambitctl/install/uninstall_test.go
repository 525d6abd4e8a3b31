package install

import (
	"context"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

// TestReleaseEmptyCRD: a terminating CRD whose custom resources are all gone loses the API
// server's cleanup finalizer; one that still has a custom resource keeps it.
func TestReleaseEmptyCRD(t *testing.T) {
	crd := func(name, plural string) *unstructured.Unstructured {
		now := metav1.Now()
		o := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
			"metadata": map[string]any{"name": name},
			"spec": map[string]any{
				"group": "example.dev", "names": map[string]any{"plural": plural},
				"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true}},
			},
		}}
		o.SetFinalizers([]string{crdCleanup, "example.dev/other"})
		o.SetDeletionTimestamp(&now)
		return o
	}
	instance := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "example.dev/v1", "kind": "Full", "metadata": map[string]any{"name": "one", "namespace": "default"},
	}}
	lists := map[schema.GroupVersionResource]string{
		{Group: "example.dev", Version: "v1", Resource: "empties"}: "EmptyList",
		{Group: "example.dev", Version: "v1", Resource: "fulls"}:   "FullList",
		crdResource: "CustomResourceDefinitionList",
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), lists,
		crd("empties.example.dev", "empties"), crd("fulls.example.dev", "fulls"), instance)
	k := &Kube{Dynamic: dyn}
	ctx := context.Background()
	for name, wantReleased := range map[string]bool{"empties.example.dev": true, "fulls.example.dev": false} {
		o, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		releaseEmptyCRD(ctx, k, *o)
		after, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if released := !slices.Contains(after.GetFinalizers(), crdCleanup); released != wantReleased {
			t.Errorf("%s: finalizers after = %v; want the cleanup finalizer removed = %v", name, after.GetFinalizers(), wantReleased)
		}
		if !slices.Contains(after.GetFinalizers(), "example.dev/other") {
			t.Errorf("%s: another finalizer was removed too: %v", name, after.GetFinalizers())
		}
	}
}
