// Package smoke is the first scenario every Ambit test cluster must pass, shared by its test
// and by the demo: two echo replicas spread over two nodes behind a Service, a DaemonSet with
// a pod on every node, and a client pod that reaches each replica by pod IP and through the
// Service's ClusterIP (kube-proxy), with logs and exec through the real API.
package smoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/tests/cluster"
)

// EchoImage is the echo test app's image, built by `make images`.
const EchoImage = "ambit.local/echo:dev"

// identityEnv gives the echo app its identity through the downward API.
const identityEnv = `[{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}},
  {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}},
  {name: SERVICE_ACCOUNT, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}},
  {name: VERSION, valueFrom: {fieldRef: {fieldPath: "metadata.labels['version']"}}}]`

// manifests is the scenario's workload; %[1]s is the echo image, %[2]s the client's node and
// %[3]s the identity environment.
const manifests = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec:
      serviceAccountName: echo
      # One replica per node, so the Service spans the fabric.
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: echo}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: echo
        image: %[1]s
        imagePullPolicy: Never
        args: [server, --http, "8080", --grpc, "7070", --tcp, "9000"]
        env: %[3]s
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 7070}
  - {name: tcp, port: 9000}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent, version: v1}}
    spec:
      containers:
      - name: agent
        image: %[1]s
        imagePullPolicy: Never
        args: [server, --http, "8080"]
        env: %[3]s
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client, version: v1}}
spec:
  nodeName: %[2]s
  containers:
  - name: client
    image: %[1]s
    imagePullPolicy: Never
    args: [server, --http, "8080"]
    env: %[3]s
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`

// Summary is the echo client's report (the fields the scenario checks).
type Summary struct {
	Total      int            `json:"total"`
	OK         int            `json:"ok"`
	Errors     int            `json:"errors"`
	ByPod      map[string]int `json:"byPod"`
	FirstError string         `json:"firstError"`
	Responses  []struct {
		Pod        string `json:"pod"`
		SourceAddr string `json:"sourceAddr"`
	} `json:"responses"`
}

// Step reports one checked step of the scenario to a person watching (the demo) or a log.
type Step func(title, detail string)

// Run deploys the scenario in namespace ns and checks it, reporting each step. It needs a
// cluster with at least two nodes.
func Run(ctx context.Context, c *cluster.Cluster, ns string, step Step) error {
	if len(c.Nodes) < 2 {
		return fmt.Errorf("the smoke scenario needs 2 nodes; the cluster has %d", len(c.Nodes))
	}
	client := c.Nodes[0].Name
	if err := c.Apply(ctx, ns, fmt.Sprintf(manifests, EchoImage, client, identityEnv)); err != nil {
		return err
	}
	echoes, err := c.WaitForDeployment(ctx, ns, "echo", 2*time.Minute)
	if err != nil {
		return err
	}
	if echoes[0].Spec.NodeName == echoes[1].Spec.NodeName {
		return fmt.Errorf("both echo replicas run on %s; want one per node", echoes[0].Spec.NodeName)
	}
	step("echo Deployment ready", fmt.Sprintf("%s on %s (%s), %s on %s (%s)",
		echoes[0].Name, echoes[0].Spec.NodeName, echoes[0].Status.PodIP,
		echoes[1].Name, echoes[1].Spec.NodeName, echoes[1].Status.PodIP))

	agents, err := c.WaitForDaemonSet(ctx, ns, "node-agent", 2*time.Minute)
	if err != nil {
		return err
	}
	var agentNodes []string
	for _, p := range agents {
		agentNodes = append(agentNodes, p.Spec.NodeName)
	}
	slices.Sort(agentNodes)
	var nodes []string
	for _, n := range c.Nodes {
		nodes = append(nodes, n.Name)
	}
	if !slices.Equal(agentNodes, nodes) {
		return fmt.Errorf("DaemonSet pods run on %v; want one on each of %v", agentNodes, nodes)
	}
	step("DaemonSet ready", fmt.Sprintf("one pod on each of %s", strings.Join(agentNodes, ", ")))

	clients, err := c.WaitForPods(ctx, ns, "app=client", 1, 2*time.Minute)
	if err != nil {
		return err
	}
	clientIP := clients[0].Status.PodIP
	for _, e := range echoes {
		s, err := RunClient(ctx, c, ns, "client", fmt.Sprintf("http://%s:8080/", e.Status.PodIP), 3)
		if err != nil {
			return err
		}
		if s.ByPod[e.Name] != 3 {
			return fmt.Errorf("requests to pod IP %s were answered by %v; want 3 by %s", e.Status.PodIP, s.ByPod, e.Name)
		}
		// Pod-to-pod traffic is not NATed, across nodes too: the server sees the client's IP.
		seen, _, _ := net.SplitHostPort(s.Responses[0].SourceAddr)
		if seen != clientIP {
			return fmt.Errorf("%s saw the client as %s; want the client pod's IP %s (no NAT between pods)", e.Name, seen, clientIP)
		}
		step("pod IP reachable", fmt.Sprintf("client %s on %s -> %s on %s: %d/%d answered by %s, which saw source %s",
			clientIP, client, e.Status.PodIP, e.Spec.NodeName, s.OK, s.Total, e.Name, seen))
	}

	// Pods reach the control plane through the kubernetes Service, verifying the apiserver's
	// certificate with the CA every pod is given.
	k8s, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("getting the kubernetes Service: %w", err)
	}
	apiURL := fmt.Sprintf("https://%s:443/version", k8s.Spec.ClusterIP)
	out, _, err := c.Exec(ctx, ns, "client", "", "/usr/local/bin/echo", "client", "--url", apiURL,
		"--cacert", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "--timeout", "5s")
	if err != nil {
		return fmt.Errorf("reaching the apiserver at %s from a pod: %w: %s", apiURL, err, out)
	}
	step("pods reach the apiserver through the kubernetes Service", fmt.Sprintf("GET %s from the client pod: TLS verified, 200", apiURL))

	svc, err := c.WaitServiceRouted(ctx, ns, "echo", 2, time.Minute)
	if err != nil {
		return err
	}
	// Every request must be answered now; kube-proxy picks a replica at random, so keep
	// sending until both have answered.
	byPod := map[string]int{}
	err = c.Wait(ctx, 30*time.Second, "both replicas behind ClusterIP "+svc.Spec.ClusterIP, func(ctx context.Context) (bool, error) {
		s, err := RunClient(ctx, c, ns, "client", fmt.Sprintf("http://%s:80/", svc.Spec.ClusterIP), 20)
		if err != nil {
			return false, err
		}
		for pod, n := range s.ByPod {
			byPod[pod] += n
		}
		return byPod[echoes[0].Name] > 0 && byPod[echoes[1].Name] > 0, nil
	})
	if err != nil {
		return fmt.Errorf("%w; answers so far: %v", err, byPod)
	}
	step("Service ClusterIP balances over both replicas (kube-proxy)", fmt.Sprintf("%s:80 -> %v", svc.Spec.ClusterIP, byPod))

	logs, err := c.Kubectl(ctx, "logs", "-n", ns, echoes[1].Name)
	if err != nil {
		return err
	}
	if !strings.Contains(logs, "8080") {
		return fmt.Errorf("kubectl logs %s shows no listener line:\n%s", echoes[1].Name, logs)
	}
	out, err = c.Kubectl(ctx, "exec", "-n", ns, echoes[1].Name, "--",
		"/usr/local/bin/echo", "client", "--url", "http://127.0.0.1:8080/", "--count", "1")
	if err != nil {
		return err
	}
	var self Summary
	if err := json.Unmarshal([]byte(out), &self); err != nil {
		return fmt.Errorf("kubectl exec of the echo client in %s answered %q: %w", echoes[1].Name, out, err)
	}
	if self.ByPod[echoes[1].Name] != 1 {
		return fmt.Errorf("kubectl exec of the echo client in %s answered %q; want one answer from the pod itself", echoes[1].Name, out)
	}
	step("kubectl logs and exec work", fmt.Sprintf("logs of %s: %d bytes; exec inside it reached %v", echoes[1].Name, len(logs), self.ByPod))
	return nil
}

// RunClient runs the echo client inside a pod (through exec) against url and returns its
// summary. Any failed request is an error quoting the client's first error.
func RunClient(ctx context.Context, c *cluster.Cluster, ns, pod, url string, count int) (Summary, error) {
	stdout, _, err := c.Exec(ctx, ns, pod, "", "/usr/local/bin/echo", "client", "--url", url,
		"--count", fmt.Sprint(count), "--new-conn", "--timeout", "5s")
	var s Summary
	if jerr := json.Unmarshal([]byte(stdout), &s); jerr != nil {
		return s, fmt.Errorf("echo client in %s/%s against %s: %w; output: %q", ns, pod, url, errors.Join(err, jerr), stdout)
	}
	if err != nil || s.OK != count {
		return s, fmt.Errorf("echo client in %s/%s against %s: %d/%d ok, first error %q (%v)", ns, pod, url, s.OK, count, s.FirstError, err)
	}
	return s, nil
}
