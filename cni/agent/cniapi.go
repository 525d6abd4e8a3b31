package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/internal/after"
	"github.com/ambit-mesh/ambit/internal/zds"
)

type peerPIDKey struct{}

// cniServer serves the plugin's calls. Each connection remembers the plugin's PID
// (SO_PEERCRED): the netns path in a CNI call is a path in the container runtime's mount
// namespace, which the agent reaches through /proc/PID/root while the plugin waits.
func (a *Agent) cniServer() *agentapi.Server {
	return &agentapi.Server{
		Handle: a.serveCNI,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pid := agentapi.PeerPID(c); pid > 0 {
				return context.WithValue(ctx, peerPIDKey{}, pid)
			}
			return ctx
		},
	}
}

func (a *Agent) serveCNI(ctx context.Context, op agentapi.Op, req agentapi.PodRequest) (bool, error) {
	key := req.PodNamespace + "/" + req.PodName
	switch op {
	case agentapi.OpAdd:
		began := time.Now()
		steps, enrolled, err := a.cniAdd(ctx, req)
		took := time.Since(began)
		after.Reply(ctx, func() {
			if err != nil {
				a.log.Warn("CNI ADD failed", "pod", key, "err", err)
			} else if enrolled {
				// received places the request on the node's clock, for the cniadd benchmark
				// to split the plugin's time into before, in and after the agent.
				attrs := append([]any{"pod", key, "received", began.UTC().Format(time.RFC3339Nano), "took", millis(took)}, steps.attrs()...)
				a.log.Info("enrolled new pod", attrs...)
			}
		})
		return enrolled, err
	case agentapi.OpDel:
		return false, a.unenrollKey(ctx, key)
	default:
		return a.cniCheck(ctx, req)
	}
}

// lookup returns the pod and its namespace, from the informers or, for a pod the informer has
// not seen yet, from the API server.
func (a *Agent) lookup(ctx context.Context, req agentapi.PodRequest) (*corev1.Pod, *corev1.Namespace, error) {
	pod, err := a.pods.Pods(req.PodNamespace).Get(req.PodName)
	if err != nil || (req.PodUID != "" && string(pod.UID) != req.PodUID) {
		pod, err = a.client.CoreV1().Pods(req.PodNamespace).Get(ctx, req.PodName, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("looking up pod %s/%s: %w", req.PodNamespace, req.PodName, err)
		}
	}
	ns, err := a.nss.Get(req.PodNamespace)
	if err != nil {
		ns, err = a.client.CoreV1().Namespaces().Get(ctx, req.PodNamespace, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("looking up namespace %s: %w", req.PodNamespace, err)
		}
	}
	return pod, ns, nil
}

func (a *Agent) notConnected() error {
	return fmt.Errorf("ztunnel not connected on node %s; the kubelet retries the pod's sandbox", a.cfg.NodeName)
}

func (a *Agent) cniAdd(ctx context.Context, req agentapi.PodRequest) (enrollSteps, bool, error) {
	var steps enrollSteps
	pod, ns, err := a.lookup(ctx, req)
	if err != nil {
		return steps, false, err
	}
	d := wantEnrolled(pod, ns)
	for _, w := range d.warnings {
		a.log.Warn(w)
	}
	if !d.enroll {
		return steps, false, nil
	}
	if a.wantBypass(pod, ns, d) {
		// Fail-open while ztunnel is gone: the pod starts outside the mesh, and the resync
		// that follows ztunnel's connect enrols it.
		a.log.Warn("ztunnel gone for longer than the fail-open grace period; new pod starts outside the mesh",
			"pod", req.PodNamespace+"/"+req.PodName)
		// The reconciler annotates it bypassed (see below for why not here).
		a.queue.Add(req.PodNamespace + "/" + req.PodName)
		return steps, false, nil
	}
	if !a.zds.Connected() {
		return steps, false, a.notConnected()
	}
	nsPath := req.Netns
	if pid, ok := ctx.Value(peerPIDKey{}).(int); ok && pid > 0 && pid != selfPID {
		nsPath = filepath.Join(a.cfg.ProcRoot, strconv.Itoa(pid), "root", req.Netns)
	}
	steps, err = a.enroll(ctx, pod, nsPath, req.IPs, true)
	if err != nil {
		if errors.Is(err, zds.ErrNotConnected) {
			return steps, false, a.notConnected()
		}
		return steps, false, err
	}
	// The annotation is the reconciler's job, right after this reply: a round trip to the API
	// server, slow when it is busy, that the sandbox need not wait for, and that must not
	// compete with the reply for CPU. Nothing needs it before the pod has an IP in its status
	// (istiod-lite then tells other ztunnels to use HBONE to it), which the kubelet posts after
	// this ADD returns; the pod's own traffic is captured already. The queue retries a failed
	// patch, and an agent that restarts before it lands enrols the unannotated pod again as a
	// running pod and annotates it.
	key := req.PodNamespace + "/" + req.PodName
	after.Reply(ctx, func() { a.queue.Add(key) })
	return steps, true, nil
}

func (a *Agent) cniCheck(ctx context.Context, req agentapi.PodRequest) (bool, error) {
	pod, ns, err := a.lookup(ctx, req)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	_, enrolled := a.members[string(pod.UID)]
	a.mu.Unlock()
	if d := wantEnrolled(pod, ns); d.enroll && !enrolled && !a.wantBypass(pod, ns, d) {
		return false, fmt.Errorf("pod %s/%s is selected for ambient but not enrolled on node %s", pod.Namespace, pod.Name, a.cfg.NodeName)
	}
	return enrolled, nil
}
