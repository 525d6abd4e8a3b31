package cluster

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
)

// apiserverPort is the kube-apiserver's secure port on the control-plane machine.
const apiserverPort = 6443

// serviceIssuer is the service-account token issuer, as in a kubeadm cluster.
const serviceIssuer = "https://kubernetes.default.svc.cluster.local"

// makeControlPlanePKI issues the certificates and kubeconfigs of the control plane.
func makeControlPlanePKI(p *pki) error {
	kubernetesSvc := net.IPv4(10, 96, 0, 1)
	steps := []struct {
		name, cn string
		groups   []string
		dns      []string
		ips      []net.IP
		server   bool
	}{
		{name: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			ips: []net.IP{kubernetesSvc, controlPlaneIP, net.IPv4(127, 0, 0, 1)}},
		{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", groups: []string{"system:masters"}},
		{name: "admin", cn: "ambit-admin", groups: []string{"system:masters"}},
		{name: "controller-manager", cn: "system:kube-controller-manager"},
		{name: "scheduler", cn: "system:kube-scheduler"},
		{name: "kube-proxy", cn: "system:kube-proxy"},
	}
	for _, s := range steps {
		if err := p.issue(s.name, s.cn, s.groups, s.dns, s.ips, s.server); err != nil {
			return err
		}
	}
	local := fmt.Sprintf("https://127.0.0.1:%d", apiserverPort)
	for _, name := range []string{"controller-manager", "scheduler"} {
		if _, err := p.kubeconfig(name, local); err != nil {
			return err
		}
	}
	_, err := p.kubeconfig("kube-proxy", fmt.Sprintf("https://%s:%d", controlPlaneIP, apiserverPort))
	return err
}

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// in the control-plane machine. They start together: each retries until the one it needs is
// up, which is faster than starting them one after the other. The controller manager and the
// scheduler get no authentication/authorization kubeconfig: with one they exit when they start
// before the apiserver has bootstrapped RBAC, and nothing calls their own endpoints.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	cp := c.controlPlane
	bin := c.cfg.BinDir
	p := c.pki.path
	data := filepath.Join(c.dir, "etcd")
	procs := []struct {
		name string
		args []string
	}{
		{"etcd", []string{filepath.Join(bin, "etcd"),
			"--name=control-plane", "--data-dir=" + data,
			"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=control-plane=http://127.0.0.1:2380",
			"--listen-metrics-urls=http://127.0.0.1:2381",
			// A test cluster's data is thrown away at the end: skip fsync, which dominates
			// etcd's latency on a shared disk.
			"--unsafe-no-fsync", "--log-level=warn"}},
		{"kube-apiserver", []string{filepath.Join(bin, "kube-apiserver"),
			"--etcd-servers=http://127.0.0.1:2379",
			"--advertise-address=" + controlPlaneIP.String(), "--bind-address=0.0.0.0",
			fmt.Sprintf("--secure-port=%d", apiserverPort),
			"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
			"--client-ca-file=" + p("ca.crt"),
			"--service-cluster-ip-range=" + serviceCIDR,
			"--service-account-issuer=" + serviceIssuer,
			"--service-account-key-file=" + p("sa.pub"), "--service-account-signing-key-file=" + p("sa.key"),
			"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
			// Nodes have no resolvable hostnames: logs and exec reach kubelets by IP.
			"--kubelet-preferred-address-types=InternalIP",
			"--profiling=false"}},
		{"kube-controller-manager", []string{filepath.Join(bin, "kube-controller-manager"),
			"--kubeconfig=" + p("controller-manager.kubeconfig"),
			"--leader-elect=false", "--bind-address=127.0.0.1",
			"--service-account-private-key-file=" + p("sa.key"), "--root-ca-file=" + p("ca.crt"),
			"--use-service-account-credentials=true",
			"--cluster-signing-cert-file=" + p("ca.crt"), "--cluster-signing-key-file=" + p("ca.key"),
			"--service-cluster-ip-range=" + serviceCIDR, "--cluster-cidr=" + clusterCIDR,
			// Pod CIDRs are fixed per node by the harness (the bridge CNI config), not allocated.
			"--allocate-node-cidrs=false",
			"--profiling=false"}},
		{"kube-scheduler", []string{filepath.Join(bin, "kube-scheduler"),
			"--kubeconfig=" + p("scheduler.kubeconfig"),
			"--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false"}},
	}
	for _, pr := range procs {
		proc, err := startProcess(pr.name, cp.command(pr.args[0], pr.args[1:]...), c.logPath(pr.name))
		if err != nil {
			return err
		}
		c.procs = append(c.procs, proc)
	}
	return nil
}
