package cniadd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/tests/mesh"
)

// connResult is the connection rate of one backend.
type connResult struct {
	backend             string
	plainRate, meshRate float64 // connections per second, medians of the passes
	ztunnelCPUms        float64 // both ztunnels' CPU per 1000 captured connections (median)
}

// connPods are an echo server on node-2 and a client pod on node-1 (an idle echo server, for
// its network namespace: the benchmark opens its sockets there, where capture applies to
// them as to the app's own). %[1]s is the server's node, %[2]s the client's.
const connPods = `
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: %[1]s
  containers:
  - {name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --tcp, "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: %[2]s
  containers:
  - {name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --tcp, "9000"]}
`

// measureConns compares new connections from a captured client to a captured server with
// the same between two pods outside the mesh.
func measureConns(ctx context.Context, b *testing.B, backend string) (connResult, error) {
	r := connResult{backend: backend}
	type pair struct {
		ns     string
		client *netns.Handle
		server string // ip:port
	}
	pairs := map[string]*pair{}
	for _, variant := range []string{variantEnrolled, variantPlain} {
		ns := "conns-" + backend + "-" + strings.ReplaceAll(variant, " ", "-")
		var labels map[string]string
		if variant == variantEnrolled {
			labels = map[string]string{"istio.io/dataplane-mode": "ambient"}
		}
		if err := c.CreateNamespace(ctx, ns, labels); err != nil {
			return r, err
		}
		defer c.DeleteNamespace(context.WithoutCancel(ctx), ns)
		if err := c.Apply(ctx, ns, fmt.Sprintf(connPods, c.Nodes[1].Name, c.Nodes[0].Name)); err != nil {
			return r, err
		}
		p := &pair{ns: ns}
		for _, app := range []string{"server", "client"} {
			pods, err := c.WaitForPods(ctx, ns, "app="+app, 1, 2*time.Minute)
			if err != nil {
				return r, err
			}
			pod := &pods[0]
			if got := pod.Annotations["ambient.istio.io/redirection"] == "enabled"; got != (variant == variantEnrolled) {
				return r, fmt.Errorf("pod %s/%s enrolled %v in the %s namespace", ns, app, got, variant)
			}
			if app == "server" {
				p.server = net.JoinHostPort(pod.Status.PodIP, "9000")
				continue
			}
			h, err := podNetNS(pod)
			if err != nil {
				return r, err
			}
			defer h.Close()
			p.client = h
		}
		// A first connection warms what is lazy (certificates, the HBONE pool) and proves
		// the path.
		if err := connectOnce(ctx, p.client, p.server); err != nil {
			return r, fmt.Errorf("%s: first connection: %w", variant, err)
		}
		pairs[variant] = p
	}

	var plain, captured, cpu []float64
	for pass := range connPasses {
		for _, variant := range []string{variantPlain, variantEnrolled} {
			p := pairs[variant]
			cpuBefore, err := ztunnelCPU(ctx)
			if err != nil {
				return r, err
			}
			rate, err := connPass(ctx, p.client, p.server)
			if err != nil {
				return r, fmt.Errorf("%s, pass %d: %w", variant, pass, err)
			}
			cpuAfter, err := ztunnelCPU(ctx)
			if err != nil {
				return r, err
			}
			b.Logf("%s, %s, pass %d: %.0f connections/s, ztunnels' CPU %.0f ms", backend, variant, pass, rate, (cpuAfter-cpuBefore).Seconds()*1000)
			if variant == variantPlain {
				plain = append(plain, rate)
			} else {
				captured = append(captured, rate)
				cpu = append(cpu, (cpuAfter-cpuBefore).Seconds()*1000*1000/connsPerPass)
			}
		}
	}
	r.plainRate, r.meshRate, r.ztunnelCPUms = median(plain), median(captured), median(cpu)
	return r, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// connectOnce connects from h to addr and reads the echo server's identity line: the server
// accepted the connection and answered.
func connectOnce(ctx context.Context, h *netns.Handle, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		return fmt.Errorf("reading the first line from %s: %w", addr, err)
	}
	return nil
}

// connPass makes connsPerPass connections from connWorkers workers and returns the rate.
func connPass(ctx context.Context, h *netns.Handle, addr string) (float64, error) {
	next := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // guards errs
	var errs []error
	start := time.Now()
	for range connWorkers {
		wg.Go(func() {
			for range next {
				if err := connectOnce(ctx, h, addr); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for range connsPerPass {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	took := time.Since(start)
	if len(errs) > 0 {
		return 0, fmt.Errorf("%d of %d connections failed, first: %w", len(errs), connsPerPass, errs[0])
	}
	return connsPerPass / took.Seconds(), nil
}

// ztunnelCPU is the CPU time (user + system) used so far by the processes of every ztunnel
// pod.
func ztunnelCPU(ctx context.Context) (time.Duration, error) {
	pods, err := c.Client.CoreV1().Pods(mesh.Namespace).List(ctx, listOptions("app=ztunnel"))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, p := range pods.Items {
		pids, err := podPIDs(string(p.UID))
		if err != nil {
			return 0, fmt.Errorf("ztunnel %s: %w", p.Name, err)
		}
		for _, pid := range pids {
			t, err := cpuTime(pid)
			if err != nil {
				continue // ended meanwhile
			}
			total += t
		}
	}
	return total, nil
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTick = 100

func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: the fields after it start past the last ')'.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(fields))
	}
	// utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTick, nil
}

// podPIDs returns the processes of the pod with this UID, found by their cgroup path (the
// kubelet's cgroupfs driver names the pod's cgroup pod<uid>). The test nodes share the
// machine's PID namespace.
func podPIDs(uid string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	marker := "/pod" + uid + "/"
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(cg), "\n") {
			if strings.Contains(line+"/", marker) {
				pids = append(pids, pid)
				break
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no process of pod %s found under /proc", uid)
	}
	return pids, nil
}

// podNetNS opens the network namespace of a running pod.
func podNetNS(pod *corev1.Pod) (*netns.Handle, error) {
	pids, err := podPIDs(string(pod.UID))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return netns.Open(fmt.Sprintf("/proc/%d/ns/net", pids[0]))
}
