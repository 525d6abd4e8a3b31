package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
)

// connect builds the admin clients from the kubeconfig.
func (c *Cluster) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading admin kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	c.RESTConfig = cfg
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("creating client: %w", err)
	}
	c.apply, err = newApplier(cfg)
	return err
}

// checkProcesses returns the failure of the first cluster process that has exited.
func (c *Cluster) checkProcesses() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if done, _ := p.exited(); done {
			return p.failure()
		}
	}
	return nil
}

// waitReady waits for the apiserver, every node Ready, and the default ServiceAccount.
func (c *Cluster) waitReady(ctx context.Context) error {
	var last string
	err := poll(ctx, c.cfg.StartTimeout, func() (bool, error) {
		if err := c.checkProcesses(); err != nil {
			return false, err
		}
		_, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = fmt.Sprintf("apiserver not ready: %v", err)
			return false, nil
		}
		nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			last = fmt.Sprintf("listing nodes: %v", err)
			return false, nil
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready < len(c.Nodes) {
			last = fmt.Sprintf("%d of %d nodes Ready", ready, len(c.Nodes))
			return false, nil
		}
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			last = fmt.Sprintf("default ServiceAccount: %v", err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the cluster (%s): %w", last, err)
	}
	return nil
}

// Apply creates or updates the objects of a multi-document YAML with server-side apply.
// Namespaced objects without a namespace go to namespace.
func (c *Cluster) Apply(ctx context.Context, namespace, yaml string) error {
	return c.apply.apply(ctx, namespace, yaml)
}

// Delete deletes the objects of a multi-document YAML; missing ones are not an error.
func (c *Cluster) Delete(ctx context.Context, namespace, yaml string) error {
	return c.apply.delete(ctx, namespace, yaml)
}

// Exec runs a command in a pod's container through the API (as kubectl exec does) and returns
// its stdout and stderr. A non-zero exit status is an error that includes stderr.
func (c *Cluster) Exec(ctx context.Context, namespace, pod, container string, command ...string) (string, string, error) {
	req := c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(c.RESTConfig, "GET", req.URL().String())
	if err != nil {
		return "", "", fmt.Errorf("exec in %s/%s: %w", namespace, pod, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(c.RESTConfig, "POST", req.URL())
	if err != nil {
		return "", "", fmt.Errorf("exec in %s/%s: %w", namespace, pod, err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", fmt.Errorf("exec in %s/%s: %w", namespace, pod, err)
	}
	var stdout, stderr bytes.Buffer
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("exec %q in %s/%s: %w (stderr: %s)", strings.Join(command, " "), namespace, pod, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), stderr.String(), nil
}

// Logs returns a container's log.
func (c *Cluster) Logs(ctx context.Context, namespace, pod, container string) (string, error) {
	b, err := c.Client.CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("logs of %s/%s: %w", namespace, pod, err)
	}
	return string(b), nil
}

// Kubectl runs the pinned kubectl against the cluster and returns its stdout.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.cfg.BinDir, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// CreateNamespace creates a namespace with the given labels and waits for its default
// ServiceAccount, without which pods are refused.
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return c.Wait(ctx, 30*time.Second, "default ServiceAccount in "+name, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// DeleteNamespace deletes a namespace and waits until it is gone.
func (c *Cluster) DeleteNamespace(ctx context.Context, name string) error {
	err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	return c.Wait(ctx, 2*time.Minute, "namespace "+name+" deleted", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// Wait polls cond until it returns true or an error, or timeout passes; what names the
// condition in the timeout error. A cluster process that dies meanwhile ends the wait with
// that process's failure.
func (c *Cluster) Wait(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	err := poll(ctx, timeout, func() (bool, error) {
		if err := c.checkProcesses(); err != nil {
			return false, err
		}
		return cond(ctx)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
	return nil
}

// HTTPClient returns an HTTP client whose connections are made on the cluster fabric, so it
// reaches pod and node addresses.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: c.DialContext, DisableKeepAlives: true}, Timeout: 10 * time.Second}
}
