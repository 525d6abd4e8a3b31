// Package precheck tells whether a cluster can take Ambit before anything is installed: the
// API server answers with a supported version, the user may install cluster-wide objects, no
// other Istio control plane or data plane is there, and the nodes' kernels have what the eBPF
// redirection needs (else the node agent falls back to nftables).
package precheck

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Status is a check's outcome.
type Status int

const (
	Pass Status = iota
	// Warn is a finding that does not stop an install.
	Warn
	// Fail stops an install.
	Fail
)

func (s Status) String() string { return [...]string{"✔", "!", "✘"}[s] }

// Result is one check's outcome with what it found and, when not Pass, what to do.
type Result struct {
	Check, Message string
	Status         Status
}

// MinKubernetes is the oldest Kubernetes minor version Ambit supports (1.<MinKubernetes>).
const MinKubernetes = 30

// minEBPFKernel is the first kernel with everything the eBPF backend uses: bpf_sk_assign in
// TC programs (5.7), sk_lookup programs (5.9) and bpf_redirect_neigh (5.10). The node agent
// probes each itself and falls back to nftables; this check only warns ahead.
var minEBPFKernel = [2]int{5, 10}

// componentLabel is ambitctl's label on what it installed (ambitctl/install.ComponentLabel).
const componentLabel = "install.ambit.dev/component"

// Run runs every check and returns their results; it stops early only if the API server
// cannot be reached.
func Run(ctx context.Context, k kubernetes.Interface, host string) []Result {
	v, err := k.Discovery().ServerVersion()
	if err != nil {
		return []Result{{Check: "API server", Status: Fail, Message: fmt.Sprintf("cannot reach %s: %v (check --kubeconfig or KUBECONFIG)", host, err)}}
	}
	out := []Result{{Check: "API server", Status: Pass, Message: fmt.Sprintf("%s answers, Kubernetes %s", host, v.GitVersion)}}
	out = append(out, version(v.Major, v.Minor))
	out = append(out, permissions(ctx, k)...)
	out = append(out, conflicts(ctx, k)...)
	out = append(out, kernels(ctx, k)...)
	return out
}

func version(major, minor string) Result {
	mi, err := strconv.Atoi(strings.TrimRight(minor, "+"))
	if err != nil || major != "1" {
		return Result{Check: "Kubernetes version", Status: Warn, Message: fmt.Sprintf("cannot read version %s.%s; Ambit supports 1.%d and later", major, minor, MinKubernetes)}
	}
	if mi < MinKubernetes {
		return Result{Check: "Kubernetes version", Status: Fail, Message: fmt.Sprintf("1.%d is older than the oldest supported, 1.%d: upgrade the cluster", mi, MinKubernetes)}
	}
	return Result{Check: "Kubernetes version", Status: Pass, Message: fmt.Sprintf("1.%d is supported (1.%d and later)", mi, MinKubernetes)}
}

// permissions checks the cluster-wide writes an install makes.
func permissions(ctx context.Context, k kubernetes.Interface) []Result {
	var out []Result
	for _, ra := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
		{Verb: "create", Group: "apps", Resource: "daemonsets", Namespace: "istio-system"},
	} {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}
		what := ra.Verb + " " + ra.Resource
		res, err := k.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		switch {
		case err != nil:
			out = append(out, Result{Check: "permissions", Status: Warn, Message: fmt.Sprintf("cannot ask whether you may %s: %v", what, err)})
		case !res.Status.Allowed:
			out = append(out, Result{Check: "permissions", Status: Fail, Message: fmt.Sprintf("you may not %s: install as a cluster administrator", what)})
		}
	}
	if len(out) == 0 {
		out = append(out, Result{Check: "permissions", Status: Pass, Message: "you may create CRDs, cluster roles and the DaemonSets"})
	}
	return out
}

// conflicts looks for an Istio install that is not Ambit's: its control plane, ztunnel or
// CNI node agent, or sidecar injection.
func conflicts(ctx context.Context, k kubernetes.Interface) []Result {
	var found []string
	deps, err := k.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return []Result{{Check: "other Istio installs", Status: Warn, Message: fmt.Sprintf("cannot list Deployments: %v", err)}}
	}
	for _, d := range deps.Items {
		if d.Labels[componentLabel] == "" {
			found = append(found, fmt.Sprintf("an istiod Deployment %s/%s", d.Namespace, d.Name))
		}
	}
	dss, err := k.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return []Result{{Check: "other Istio installs", Status: Warn, Message: fmt.Sprintf("cannot list DaemonSets: %v", err)}}
	}
	for _, d := range dss.Items {
		if (d.Name == "ztunnel" || d.Name == "istio-cni-node") && d.Labels[componentLabel] == "" {
			found = append(found, fmt.Sprintf("a DaemonSet %s/%s", d.Namespace, d.Name))
		}
	}
	hooks, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, h := range hooks.Items {
			if strings.HasPrefix(h.Name, "istio-sidecar-injector") || strings.HasPrefix(h.Name, "istio-revision-tag") {
				found = append(found, "Istio's sidecar injector (MutatingWebhookConfiguration "+h.Name+")")
			}
		}
	} else if !apierrors.IsForbidden(err) {
		return []Result{{Check: "other Istio installs", Status: Warn, Message: fmt.Sprintf("cannot list webhooks: %v", err)}}
	}
	if len(found) > 0 {
		return []Result{{Check: "other Istio installs", Status: Fail, Message: "found " + strings.Join(found, ", ") + ": remove that install (istioctl uninstall --purge) before installing Ambit"}}
	}
	upgrade := ""
	for _, d := range dss.Items {
		if d.Labels[componentLabel] != "" {
			upgrade = " (Ambit is installed: install again to upgrade it)"
		}
	}
	return []Result{{Check: "other Istio installs", Status: Pass, Message: "none" + upgrade}}
}

// kernels checks each node's kernel release against minEBPFKernel.
func kernels(ctx context.Context, k kubernetes.Interface) []Result {
	nodes, err := k.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []Result{{Check: "node kernels", Status: Warn, Message: fmt.Sprintf("cannot list nodes: %v", err)}}
	}
	if len(nodes.Items) == 0 {
		return []Result{{Check: "node kernels", Status: Warn, Message: "the cluster has no nodes yet"}}
	}
	var old []string
	for _, n := range nodes.Items {
		kv := n.Status.NodeInfo.KernelVersion
		if !atLeast(kv, minEBPFKernel) {
			old = append(old, n.Name+" ("+kv+")")
		}
	}
	if len(old) > 0 {
		return []Result{{Check: "node kernels", Status: Warn, Message: fmt.Sprintf("eBPF redirection needs Linux %d.%d or later; these nodes use nftables instead: %s", minEBPFKernel[0], minEBPFKernel[1], strings.Join(old, ", "))}}
	}
	return []Result{{Check: "node kernels", Status: Pass, Message: fmt.Sprintf("all %d nodes run Linux %d.%d or later: eBPF redirection available", len(nodes.Items), minEBPFKernel[0], minEBPFKernel[1])}}
}

// atLeast reports whether the kernel release kv ("6.1.0-18-amd64") is at least want.
func atLeast(kv string, want [2]int) bool {
	parts := strings.SplitN(kv, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return major > want[0] || major == want[0] && minor >= want[1]
}
