// Package waypoint creates, lists and deletes waypoints: Gateway API Gateways of class
// istio-waypoint with the HBONE listener on 15008, as `istioctl waypoint` does, and binds a
// namespace to one with the istio.io/use-waypoint label.
package waypoint

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"istio.io/api/label"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Class is the GatewayClass of waypoints.
const Class = "istio-waypoint"

// DefaultName is the name of a waypoint that names none, as in Istio.
const DefaultName = "waypoint"

// ForValues are the values of istio.io/waypoint-for: the traffic a waypoint handles.
var ForValues = []string{"service", "workload", "all", "none"}

var gatewayResource = gwv1.SchemeGroupVersion.WithResource("gateways")

// ErrNoGatewayAPI means the cluster lacks the Gateway API CRDs.
var ErrNoGatewayAPI = errors.New("the cluster has no Gateway API CRDs (gateways.gateway.networking.k8s.io): install them with `ambitctl install` (profile ambient adds them) or from sigs.k8s.io/gateway-api")

// Client manages waypoints.
type Client struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// Spec is a waypoint to apply.
type Spec struct {
	Namespace, Name string
	// For is the istio.io/waypoint-for value (default service).
	For string
	// EnrollNamespace labels the namespace istio.io/use-waypoint=<name>.
	EnrollNamespace bool
}

// Gateway returns the Gateway object of s.
func (s Spec) Gateway() *gwv1.Gateway {
	return &gwv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: gwv1.SchemeGroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{
			Name: s.Name, Namespace: s.Namespace,
			Labels: map[string]string{label.IoIstioWaypointFor.Name: s.For},
		},
		Spec: gwv1.GatewaySpec{
			GatewayClassName: Class,
			Listeners: []gwv1.Listener{{
				Name:     "mesh",
				Port:     15008,
				Protocol: "HBONE",
			}},
		},
	}
}

func (s *Spec) defaults() error {
	if s.Name == "" {
		s.Name = DefaultName
	}
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	if s.For == "" {
		s.For = "service"
	}
	if !slices.Contains(ForValues, s.For) {
		return fmt.Errorf("--for %q: want one of %s", s.For, strings.Join(ForValues, ", "))
	}
	return nil
}

// Apply creates or updates the waypoint s and, if asked, binds its namespace to it.
func (c Client) Apply(ctx context.Context, s Spec) error {
	if err := s.defaults(); err != nil {
		return err
	}
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, s.Namespace, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("namespace %s: %w", s.Namespace, err)
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s.Gateway())
	if err != nil {
		return fmt.Errorf("encoding Gateway %s/%s: %w", s.Namespace, s.Name, err)
	}
	u := &unstructured.Unstructured{Object: obj}
	_, err = c.Dynamic.Resource(gatewayResource).Namespace(s.Namespace).Apply(ctx, s.Name, u, metav1.ApplyOptions{FieldManager: "ambitctl", Force: true})
	if err != nil {
		return noGatewayAPI(fmt.Errorf("applying Gateway %s/%s: %w", s.Namespace, s.Name, err))
	}
	if s.EnrollNamespace {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, label.IoIstioUseWaypoint.Name, s.Name)
		if _, err := c.Kube.CoreV1().Namespaces().Patch(ctx, s.Namespace, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("labelling namespace %s %s=%s: %w", s.Namespace, label.IoIstioUseWaypoint.Name, s.Name, err)
		}
	}
	return nil
}

// noGatewayAPI turns a missing-resource error into ErrNoGatewayAPI.
func noGatewayAPI(err error) error {
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		var status apierrors.APIStatus
		if errors.As(err, &status) && status.Status().Details != nil && status.Status().Details.Kind != "gateways" {
			return err
		}
		return ErrNoGatewayAPI
	}
	return err
}

// Waypoint is a listed waypoint.
type Waypoint struct {
	Namespace, Name, For string
	// Programmed is the Gateway's Programmed condition ("True", "False" or "Unknown" before a
	// controller saw it), with its reason.
	Programmed, Reason string
	Addresses          []string
}

// List returns the waypoints of namespace ("" for all namespaces).
func (c Client) List(ctx context.Context, namespace string) ([]Waypoint, error) {
	list, err := c.Dynamic.Resource(gatewayResource).Namespace(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, noGatewayAPI(fmt.Errorf("listing Gateways: %w", err))
	}
	var out []Waypoint
	for _, u := range list.Items {
		var gw gwv1.Gateway
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &gw); err != nil {
			return nil, fmt.Errorf("decoding Gateway %s/%s: %w", u.GetNamespace(), u.GetName(), err)
		}
		if gw.Spec.GatewayClassName != Class {
			continue
		}
		w := Waypoint{Namespace: gw.Namespace, Name: gw.Name, For: gw.Labels[label.IoIstioWaypointFor.Name], Programmed: "Unknown"}
		if w.For == "" {
			w.For = "service"
		}
		if cond := meta.FindStatusCondition(gw.Status.Conditions, string(gwv1.GatewayConditionProgrammed)); cond != nil {
			w.Programmed, w.Reason = string(cond.Status), cond.Reason
		}
		for _, a := range gw.Status.Addresses {
			w.Addresses = append(w.Addresses, a.Value)
		}
		out = append(out, w)
	}
	return out, nil
}

// Delete removes the waypoints names of namespace (all of its waypoints when names is empty),
// and the istio.io/use-waypoint label of the namespace when it pointed at one of them.
func (c Client) Delete(ctx context.Context, namespace string, names []string) ([]string, error) {
	if len(names) == 0 {
		all, err := c.List(ctx, namespace)
		if err != nil {
			return nil, err
		}
		for _, w := range all {
			names = append(names, w.Name)
		}
	}
	var deleted []string
	for _, name := range names {
		err := c.Dynamic.Resource(gatewayResource).Namespace(namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return deleted, fmt.Errorf("waypoint %s/%s: no such Gateway", namespace, name)
		}
		if err != nil {
			return deleted, noGatewayAPI(fmt.Errorf("deleting Gateway %s/%s: %w", namespace, name, err))
		}
		deleted = append(deleted, name)
	}
	ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return deleted, fmt.Errorf("reading namespace %s: %w", namespace, err)
	}
	if v, ok := ns.Labels[label.IoIstioUseWaypoint.Name]; ok && slices.Contains(deleted, v) {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, label.IoIstioUseWaypoint.Name)
		if _, err := c.Kube.CoreV1().Namespaces().Patch(ctx, namespace, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return deleted, fmt.Errorf("removing label %s from namespace %s: %w", label.IoIstioUseWaypoint.Name, namespace, err)
		}
	}
	return deleted, nil
}
