package cniadd

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ambit-mesh/ambit/tests/bench/cniadd/cnitime"
	"github.com/ambit-mesh/ambit/tests/bench/hostcpu"
	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/mesh"
)

// The two namespaces of a measurement.
const (
	variantEnrolled = "enrolled"
	variantPlain    = "not enrolled"
)

// addResult is the CNI ADD timing of one backend and namespace.
type addResult struct {
	backend, variant string
	load             addLoad
	chain            []time.Duration // per sandbox: the sum of its plugins' ADD calls
	plugin           []time.Duration // per sandbox: ambit-cni's ADD call
	failed           int             // sandboxes with a failed ADD (the kubelet retried them)
	failures         []string        // what the kubelet's events said of them, once each
	busy, steal      float64         // the machine's share of time not idle, and the hypervisor's, over the row
	// steps are the agent's own timings of each enrolment (its "enrolled new pod" log line),
	// by step: took (the whole ADD request in the agent), lock_wait, ztunnel_ack, redirect.
	steps map[string][]time.Duration
	// slowest are the enrolled pods with the slowest ambit-cni ADDs, slowest first, each
	// split into its steps: which part a tail sample came from.
	slowest []slowAdd
	// overlapped counts the enrolled pods whose ambit-cni ADD ran next to a CNI call for
	// another sandbox on the same node.
	overlapped int
}

// slowAdd is one pod's ambit-cni ADD and its steps.
type slowAdd struct {
	pod    string
	start  time.Time
	plugin time.Duration
	steps  map[string]time.Duration
	// others are the node's CNI calls for other sandboxes that ran while this one did.
	others string
}

// slowShown is how many of the slowest ADDs of an enrolled row the report splits: at 100 pods
// the p99 is the second slowest.
const slowShown = 3

// agentSteps are the timings the agent logs for each enrolled new pod, in report order,
// then the two parts of ambit-cni's call outside the agent: from the plugin's exec until the
// agent has the request (exec, Go's start-up, connecting, sending), and from the agent's
// answer until the plugin has exited (reading it, printing the result, exiting).
var agentSteps = []string{"took", "lock_wait", "ztunnel_ack", "redirect", stepToAgent, stepFromAgent}

const (
	stepToAgent   = "to_agent"
	stepFromAgent = "from_agent"
)

// agentCall is when an agent received a pod's ADD and how long its steps took, from its log
// line.
type agentCall struct {
	received time.Time
	steps    map[string]time.Duration
}

func listOptions(selector string) metav1.ListOptions {
	return metav1.ListOptions{LabelSelector: selector}
}

// podFor is a pod whose only container is the pause program: the sandbox is what is
// measured, the container adds as little as possible.
func podFor(name, node string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "cniadd"}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{{Name: "pause", Image: "ambit.local/pause:dev", ImagePullPolicy: corev1.PullNever}},
		},
	}
}

// measureAdds creates l.pods pods in an enrolled namespace and as many in a plain one,
// l.workers at a time, interleaved so that both see the same load, deleted once they run
// (by rounds if l.round is set), and reads the plugins' timings from the nodes.
func measureAdds(ctx context.Context, backend string, l addLoad) ([]addResult, error) {
	prefix := fmt.Sprintf("cniadd-%s-%d-", backend, l.workers)
	nss := map[string]string{
		variantEnrolled: prefix + "enrolled",
		variantPlain:    prefix + "plain",
	}
	if err := c.CreateNamespace(ctx, nss[variantEnrolled], map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		return nil, err
	}
	if err := c.CreateNamespace(ctx, nss[variantPlain], nil); err != nil {
		return nil, err
	}
	defer func() {
		for _, ns := range nss {
			c.DeleteNamespace(context.WithoutCancel(ctx), ns)
		}
	}()

	var all []podJob
	for i := range 2 * l.pods {
		v := []string{variantEnrolled, variantPlain}[i%2]
		all = append(all, podJob{ns: nss[v], enrolled: v == variantEnrolled, name: fmt.Sprintf("pod-%d", i/2), node: c.Nodes[(i/2)%len(c.Nodes)].Name})
	}
	t0, err := hostcpu.Read()
	if err != nil {
		return nil, err
	}
	size, rounds := len(all), l.round > 0
	if rounds {
		size = 2 * l.round
	}
	for rest := all; len(rest) > 0; {
		n := min(size, len(rest))
		if err := runPods(ctx, rest[:n], l.workers, rounds); err != nil {
			return nil, err
		}
		if rounds {
			if err := tearDown(ctx, rest[:n]); err != nil {
				return nil, err
			}
		}
		rest = rest[n:]
	}

	t1, err := hostcpu.Read()
	if err != nil {
		return nil, err
	}
	calls, err := readCalls(ctx)
	if err != nil {
		return nil, err
	}
	var out []addResult
	for _, variant := range []string{variantEnrolled, variantPlain} {
		r := addResult{backend: backend, variant: variant, load: l, busy: hostcpu.Busy(t0, t1), steal: hostcpu.Steal(t0, t1)}
		type sandbox struct {
			total, plugin time.Duration
			failed        bool
		}
		sandboxes := map[string]*sandbox{}
		for _, call := range calls {
			if call.Command != "ADD" || call.Namespace != nss[variant] {
				continue
			}
			s := sandboxes[call.ContainerID]
			if s == nil {
				s = &sandbox{}
				sandboxes[call.ContainerID] = s
			}
			d := time.Duration(call.Nanos)
			s.total += d
			if call.Plugin == "ambit-cni" {
				s.plugin = d
			}
			if call.ExitCode != 0 {
				s.failed = true
			}
		}
		for _, s := range sandboxes {
			if s.failed {
				r.failed++
				continue
			}
			r.chain = append(r.chain, s.total)
			r.plugin = append(r.plugin, s.plugin)
		}
		if r.failed > 0 {
			if r.failures, err = sandboxFailures(ctx, nss[variant]); err != nil {
				return nil, err
			}
		}
		if len(r.chain) < l.pods {
			return nil, fmt.Errorf("%s, %s, %s: timings of %d successful sandboxes recorded; want %d (one per pod)", backend, l.name, variant, len(r.chain), l.pods)
		}
		if variant == variantEnrolled {
			var agentCalls map[string]agentCall
			if r.steps, agentCalls, err = readAgentSteps(ctx, nss[variant]); err != nil {
				return nil, err
			}
			for _, call := range calls {
				a, ok := agentCalls[call.Pod]
				if !ok || call.Plugin != "ambit-cni" || call.Command != "ADD" || call.Namespace != nss[variant] || call.ExitCode != 0 {
					continue
				}
				start, end := time.Unix(0, call.StartNanos), time.Unix(0, call.StartNanos+call.Nanos)
				a.steps[stepToAgent] = a.received.Sub(start)
				a.steps[stepFromAgent] = end.Sub(a.received.Add(a.steps["took"]))
				r.steps[stepToAgent] = append(r.steps[stepToAgent], a.steps[stepToAgent])
				r.steps[stepFromAgent] = append(r.steps[stepFromAgent], a.steps[stepFromAgent])
				others := overlapping(calls, call)
				if others != "" {
					r.overlapped++
				}
				r.slowest = append(r.slowest, slowAdd{pod: call.Pod, start: start, plugin: time.Duration(call.Nanos), steps: a.steps, others: others})
			}
			slices.SortFunc(r.slowest, func(x, y slowAdd) int { return cmp.Compare(y.plugin, x.plugin) })
			r.slowest = r.slowest[:min(slowShown, len(r.slowest))]
			if n := len(r.steps["took"]); n < l.pods {
				return nil, fmt.Errorf("%s, %s: the agents logged %d enrolled new pods of namespace %s; want %d", backend, l.name, n, nss[variant], l.pods)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// overlapping lists the calls of calls that ran on c's node, for another sandbox, while c ran,
// as "DEL ns/pod (plugins)", or "" if none did.
func overlapping(calls []cnitime.Call, c cnitime.Call) string {
	end := c.StartNanos + c.Nanos
	var keys []string
	plugins := map[string][]string{}
	for _, o := range calls {
		if o.Node != c.Node || o.ContainerID == c.ContainerID || o.StartNanos >= end || o.StartNanos+o.Nanos <= c.StartNanos {
			continue
		}
		k := o.Command + " " + o.Namespace + "/" + o.Pod
		if _, ok := plugins[k]; !ok {
			keys = append(keys, k)
		}
		plugins[k] = append(plugins[k], o.Plugin)
	}
	var out []string
	for _, k := range keys {
		out = append(out, k+" ("+strings.Join(plugins[k], ", ")+")")
	}
	return strings.Join(out, "; ")
}

// podJob is one pod to create.
type podJob struct {
	ns, name, node string
	enrolled       bool
}

// runPods runs jobs, workers at a time; keep leaves the pods in place once they run.
func runPods(ctx context.Context, jobs []podJob, workers int, keep bool) error {
	next := make(chan podJob)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards errs
	var errs []error
	for range workers {
		wg.Go(func() {
			for j := range next {
				if err := runPod(ctx, j, keep); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// runPod creates a pod, waits until it runs (its sandbox, network included, is up) and, if it
// should be enrolled, until the agent has annotated it, checks that a plain pod was not
// annotated, and deletes it unless keep.
func runPod(ctx context.Context, j podJob, keep bool) error {
	pods := c.Client.CoreV1().Pods(j.ns)
	created, err := pods.Create(ctx, podFor(j.name, j.node), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", j.ns, j.name, err)
	}
	what := "pod " + j.ns + "/" + j.name + " running"
	if j.enrolled {
		what += " and annotated ambient.istio.io/redirection=enabled"
	}
	pod, err := watchPod(ctx, created, 2*time.Minute, func(p *corev1.Pod) (bool, error) {
		if problem := cluster.PodProblem(p); problem != "" {
			return false, errors.New(problem)
		}
		return p.Status.Phase == corev1.PodRunning && (!j.enrolled || annotated(p)), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w (annotations %v)", what, err, pod.Annotations)
	}
	if !j.enrolled && annotated(pod) {
		return fmt.Errorf("pod %s/%s: annotated as enrolled in a namespace that is not (annotations %v)", j.ns, j.name, pod.Annotations)
	}
	if keep {
		return nil
	}
	return deletePod(ctx, j)
}

// watchPod waits until done says the pod is as wanted, for up to timeout, and returns the pod
// as last seen. It watches rather than polls: polling the API server every few milliseconds
// while the node sets the pod up would load the machine the ADD is measured on.
func watchPod(ctx context.Context, pod *corev1.Pod, timeout time.Duration, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pods := c.Client.CoreV1().Pods(pod.Namespace)
	for {
		w, err := pods.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
			ResourceVersion: pod.ResourceVersion,
		})
		if err != nil {
			return pod, err
		}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Error:
				w.Stop()
				return pod, apierrors.FromObject(ev.Object)
			case watch.Deleted:
				w.Stop()
				return pod, errors.New("the pod was deleted")
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			pod = p
			if ok, err := done(p); ok || err != nil {
				w.Stop()
				return pod, err
			}
		}
		w.Stop()
		// The API server ends watches after a while: watch again from the last version seen.
		if ctx.Err() != nil {
			return pod, fmt.Errorf("timed out after %v", timeout)
		}
	}
}

func deletePod(ctx context.Context, j podJob) error {
	if err := c.Client.CoreV1().Pods(j.ns).Delete(ctx, j.name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("deleting pod %s/%s: %w", j.ns, j.name, err)
	}
	return nil
}

// netnsFreed is how long tearDown waits after the last DEL: the kernel frees a deleted
// netns in a work queue once its last user is gone, with RCU grace periods that would
// otherwise slow the next ADD's qdisc and route changes.
const netnsFreed = time.Second

// tearDown deletes the pods of jobs and waits until every plugin that set up one of their
// sandboxes' network has been called to tear it down (cnitime's DEL records on the nodes) and
// the pods are gone. Then it removes their sandboxes from the nodes' runtimes, which the
// kubelet's garbage collection would do within a minute, calling the chain's DEL again, next
// to the ADDs of a later round. Last, it waits for the kernel to free the network namespaces.
func tearDown(ctx context.Context, jobs []podJob) error {
	want := map[string]bool{} // namespace/pod
	for _, j := range jobs {
		if err := deletePod(ctx, j); err != nil {
			return err
		}
		want[j.ns+"/"+j.name] = true
	}
	deadline := time.Now().Add(2 * time.Minute)
	var calls []cnitime.Call
	for {
		var err error
		if calls, err = readCalls(ctx); err != nil {
			return err
		}
		added, deleted := map[string]bool{}, map[string]bool{} // sandbox + plugin
		seen := map[string]bool{}                              // namespace/pod with an ADD
		for _, call := range calls {
			pod := call.Namespace + "/" + call.Pod
			if !want[pod] {
				continue
			}
			switch call.Command {
			case "ADD":
				added[call.ContainerID+" "+call.Plugin] = true
				seen[pod] = true
			case "DEL":
				deleted[call.ContainerID+" "+call.Plugin] = true
			}
		}
		open := 0
		for k := range added {
			if !deleted[k] {
				open++
			}
		}
		if len(seen) < len(want) {
			return fmt.Errorf("cnitime recorded no ADD for %d of the %d pods it deletes", len(want)-len(seen), len(want))
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d plugin ADDs of %d deleted pods still have no DEL after 2m", open, len(want))
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, j := range jobs {
		err := c.Wait(ctx, time.Minute, "pod "+j.ns+"/"+j.name+" gone", func(ctx context.Context) (bool, error) {
			_, err := c.Client.CoreV1().Pods(j.ns).Get(ctx, j.name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			return err
		}
	}
	sandboxes := map[string][]string{} // by node
	for _, call := range calls {
		if call.Command == "ADD" && call.Plugin == "ambit-cni" && want[call.Namespace+"/"+call.Pod] {
			sandboxes[call.Node] = append(sandboxes[call.Node], call.ContainerID)
		}
	}
	for node, ids := range sandboxes {
		if err := c.RemoveSandboxes(ctx, node, ids); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(netnsFreed):
		return nil
	}
}

func annotated(p *corev1.Pod) bool {
	return p.Annotations["ambient.istio.io/redirection"] == "enabled"
}

// readCalls reads every node's cnitime log.
func readCalls(ctx context.Context) ([]cnitime.Call, error) {
	var calls []cnitime.Call
	for _, n := range c.Nodes {
		cmd, err := c.NodeCommand(n.Name, "cat", cnitime.LogPath)
		if err != nil {
			return nil, err
		}
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("reading %s on %s: %w", cnitime.LogPath, n.Name, err)
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			var call cnitime.Call
			if err := json.Unmarshal(sc.Bytes(), &call); err != nil {
				return nil, fmt.Errorf("%s on %s: line %q: %w", cnitime.LogPath, n.Name, sc.Text(), err)
			}
			call.Node = n.Name
			calls = append(calls, call)
		}
	}
	return calls, ctx.Err()
}

// readAgentSteps reads the step timings of the "enrolled new pod" lines the cni agents logged
// for pods of namespace ns, and when each pod's request arrived, by pod name.
func readAgentSteps(ctx context.Context, ns string) (map[string][]time.Duration, map[string]agentCall, error) {
	pods, err := c.Client.CoreV1().Pods(mesh.Namespace).List(ctx, listOptions("k8s-app=istio-cni-node"))
	if err != nil {
		return nil, nil, err
	}
	steps, calls := map[string][]time.Duration{}, map[string]agentCall{}
	for _, p := range pods.Items {
		logs, err := c.Logs(ctx, mesh.Namespace, p.Name, "")
		if err != nil {
			return nil, nil, err
		}
		for _, line := range strings.Split(logs, "\n") {
			if !strings.Contains(line, `msg="enrolled new pod" pod=`+ns+"/") {
				continue
			}
			var pod string
			call := agentCall{steps: map[string]time.Duration{}}
			for _, f := range strings.Fields(line) {
				k, v, ok := strings.Cut(f, "=")
				switch {
				case !ok:
				case k == "pod":
					pod = strings.TrimPrefix(v, ns+"/")
				case k == "received":
					if call.received, err = time.Parse(time.RFC3339Nano, v); err != nil {
						return nil, nil, fmt.Errorf("agent %s: line %q: %s: %w", p.Name, line, k, err)
					}
				case slices.Contains(agentSteps, k):
					d, err := time.ParseDuration(v)
					if err != nil {
						return nil, nil, fmt.Errorf("agent %s: line %q: %s: %w", p.Name, line, k, err)
					}
					steps[k] = append(steps[k], d)
					call.steps[k] = d
				}
			}
			if pod != "" && !call.received.IsZero() {
				calls[pod] = call
			}
		}
	}
	return steps, calls, nil
}

// sandboxFailures is what the kubelet reported of the failed sandboxes of ns (its
// FailedCreatePodSandBox events carry the CNI plugin's error), each message once.
func sandboxFailures(ctx context.Context, ns string) ([]string, error) {
	events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreatePodSandBox"})
	if err != nil {
		return nil, fmt.Errorf("listing the failed sandboxes' events in %s: %w", ns, err)
	}
	var out []string
	for _, e := range events.Items {
		msg := e.InvolvedObject.Name + ": " + e.Message
		if !slices.Contains(out, msg) {
			out = append(out, msg)
		}
	}
	return out, nil
}
