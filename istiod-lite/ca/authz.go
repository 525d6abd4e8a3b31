package ca

import (
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// ImpersonatedIdentityKey is the request metadata key with which a node agent asks for the
// identity of a pod on its node.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// grant is the identity a caller may receive.
type grant struct {
	identity workloadID
	// node is the node whose pods vouched for an impersonated identity; empty otherwise.
	node string
}

// authorizer decides which identity a caller gets (README.md has the decision table).
type authorizer struct {
	trustDomain string
	// trusted holds the node accounts ("ns/sa") allowed to impersonate.
	trusted map[string]bool
	pods    PodLister
}

// authorize returns the identity caller may hold given the ImpersonatedIdentity it asked for
// (empty: none). Errors are gRPC statuses.
func (a *authorizer) authorize(caller Caller, impersonated string) (grant, error) {
	own := workloadID{TrustDomain: a.trustDomain, Namespace: caller.Namespace, ServiceAccount: caller.ServiceAccount}
	if impersonated == "" {
		return grant{identity: own}, nil
	}
	want, err := parseWorkloadID(impersonated)
	if err != nil {
		return grant{}, status.Errorf(codes.InvalidArgument, "metadata %s: %v", ImpersonatedIdentityKey, err)
	}
	if want.TrustDomain != a.trustDomain {
		return grant{}, status.Errorf(codes.PermissionDenied,
			"metadata %s %q is in trust domain %q; this CA issues only spiffe://%s identities",
			ImpersonatedIdentityKey, impersonated, want.TrustDomain, a.trustDomain)
	}
	if want == own {
		return grant{identity: own}, nil
	}
	if !a.trusted[caller.String()] {
		return grant{}, status.Errorf(codes.PermissionDenied,
			"caller %s is not a trusted node account (trusted: %s); only node agents may request %s %s",
			caller, a.trustedList(), ImpersonatedIdentityKey, impersonated)
	}
	node, err := a.nodeOf(caller)
	if err != nil {
		return grant{}, err
	}
	pods, err := a.pods.PodsOnNode(node)
	if err != nil {
		return grant{}, status.Errorf(codes.Internal, "looking up pods on node %s: %v", node, err)
	}
	for _, p := range pods {
		if p.Namespace == want.Namespace && serviceAccountOf(p) == want.ServiceAccount && p.Spec.NodeName == node && !terminated(p) {
			return grant{identity: want, node: node}, nil
		}
	}
	return grant{}, status.Errorf(codes.PermissionDenied,
		"service account %s/%s has no pod on node %s; a node agent gets only identities of running or pending pods on its own node",
		want.Namespace, want.ServiceAccount, node)
}

// nodeOf returns the node the caller's token is bound to: from the token review itself
// (Kubernetes >= 1.30), else from the pod the token is bound to.
func (a *authorizer) nodeOf(c Caller) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	if c.PodName == "" {
		return "", status.Errorf(codes.PermissionDenied,
			"token of %s is not bound to a pod, so its node is unknown; give the node agent a projected service-account token", c)
	}
	p, err := a.pods.Pod(c.Namespace, c.PodName)
	switch {
	case apierrors.IsNotFound(err):
		return "", status.Errorf(codes.PermissionDenied,
			"token of %s is bound to pod %s/%s, which is not known; retry once the pod exists", c, c.Namespace, c.PodName)
	case err != nil:
		return "", status.Errorf(codes.Internal, "looking up pod %s/%s: %v", c.Namespace, c.PodName, err)
	}
	if c.PodUID != "" && string(p.UID) != c.PodUID {
		return "", status.Errorf(codes.PermissionDenied,
			"token of %s is bound to pod %s/%s uid %s, but that pod now has uid %s; use the current pod's token",
			c, c.Namespace, c.PodName, c.PodUID, p.UID)
	}
	if p.Spec.NodeName == "" {
		return "", status.Errorf(codes.PermissionDenied,
			"token of %s is bound to pod %s/%s, which is not scheduled on a node", c, c.Namespace, c.PodName)
	}
	return p.Spec.NodeName, nil
}

func (a *authorizer) trustedList() string {
	l := make([]string, 0, len(a.trusted))
	for k := range a.trusted {
		l = append(l, k)
	}
	if len(l) == 0 {
		return "none"
	}
	slices.Sort(l)
	return strings.Join(l, ", ")
}

func serviceAccountOf(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// terminated reports whether p has finished: its containers will not run again, so it no
// longer needs a certificate.
func terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
