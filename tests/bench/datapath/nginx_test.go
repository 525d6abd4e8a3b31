package datapath

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The nginx pair's ports: the outbound hop takes plain TCP on the same ports as the servers
// (httpPort, iperfPort); the inbound hop takes TLS on these.
const (
	nginxInHTTPPort  = 18080
	nginxInIperfPort = 15201
	// nginxReadyPort answers the kubelet's readiness probes on both hops without proxying, so
	// that probes add no connections to the measured path.
	nginxReadyPort = 15021
)

// nginxCommon starts both hops' configurations: 2 workers, in the foreground, no files
// outside /tmp, the stream module Debian ships as a dynamic module.
const nginxCommon = `daemon off;
worker_processes 2;
user nobody nobody;
pid /tmp/nginx.pid;
error_log stderr notice;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 1024; }
`

// nginxOutConf is the outbound hop, the peer of the source ztunnel: plain TCP in, TLS 1.3 out
// with a client certificate, the inbound hop's certificate verified, sessions reused.
// %[1]s is the inbound hop's address.
const nginxOutConf = nginxCommon + `stream {
    log_format hop '$remote_addr -> $upstream_addr status=$status sent=$bytes_sent received=$bytes_received time=$session_time';
    access_log /dev/stdout hop;
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate /certs/out.crt;
    proxy_ssl_certificate_key /certs/out.key;
    proxy_ssl_trusted_certificate /certs/ca.crt;
    proxy_ssl_verify on;
    proxy_ssl_name ` + nginxInName + `;
    proxy_ssl_session_reuse on;
    server { listen %[2]d; proxy_pass %[1]s:%[3]d; }
    server { listen %[4]d; proxy_pass %[1]s:%[5]d; }
    server { listen %[6]d; return ready; }
}
`

// nginxInConf is the inbound hop, the peer of the destination ztunnel: TLS 1.3 in with a
// client certificate required and verified against the CA, plain TCP out to the server.
// Its access log names the protocol, the verification result and the client's subject, so the
// benchmark can check that what it measured was mutual TLS. %[1]s is the server's address.
const nginxInConf = nginxCommon + `stream {
    log_format hop '$remote_addr protocol=$ssl_protocol verify=$ssl_client_verify reused=$ssl_session_reused client="$ssl_client_s_dn" -> $upstream_addr status=$status';
    access_log /dev/stdout hop;
    ssl_protocols TLSv1.3;
    ssl_certificate /certs/in.crt;
    ssl_certificate_key /certs/in.key;
    ssl_client_certificate /certs/ca.crt;
    ssl_verify_client on;
    ssl_session_cache shared:hop:1m;
    server { listen %[3]d ssl; proxy_pass %[1]s:%[2]d; }
    server { listen %[5]d ssl; proxy_pass %[1]s:%[4]d; }
    server { listen %[6]d; return ready; }
}
`

// nginxPod runs one hop on node from the ConfigMap nginx-<hop> and the Secret nginx-certs.
// %[1]s is the node, %[2]s the hop (in or out), %[3]d the port its readiness is probed on.
const nginxPod = `
apiVersion: v1
kind: Pod
metadata: {name: nginx-%[2]s, labels: {app: nginx-%[2]s}}
spec:
  nodeName: %[1]s
  containers:
  - name: nginx
    image: ambit.local/nginx:dev
    imagePullPolicy: Never
    args: [-c, /etc/nginx/nginx.conf]
    volumeMounts:
    - {name: conf, mountPath: /etc/nginx}
    - {name: certs, mountPath: /certs}
    readinessProbe:
      tcpSocket: {port: %[3]d}
      periodSeconds: 1
  volumes:
  - {name: conf, configMap: {name: nginx-%[2]s}}
  - {name: certs, secret: {secretName: nginx-certs}}
`

// startNginx puts the pair in ns: the inbound hop on serverNode in front of serverIP, the
// outbound hop on clientNode in front of the inbound hop. It returns both pods.
func startNginx(ctx context.Context, ns, clientNode, serverNode, serverIP string, certs *nginxCerts) (out, in *corev1.Pod, err error) {
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "nginx-certs"}, Data: map[string][]byte{
		"ca.crt": certs.CA, "in.crt": certs.InCert, "in.key": certs.InKey, "out.crt": certs.OutCert, "out.key": certs.OutKey,
	}}
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("creating the nginx certificates Secret: %w", err)
	}
	in, err = startHop(ctx, ns, "in", serverNode,
		fmt.Sprintf(nginxInConf, serverIP, httpPort, nginxInHTTPPort, iperfPort, nginxInIperfPort, nginxReadyPort))
	if err != nil {
		return nil, nil, err
	}
	out, err = startHop(ctx, ns, "out", clientNode,
		fmt.Sprintf(nginxOutConf, in.Status.PodIP, httpPort, nginxInHTTPPort, iperfPort, nginxInIperfPort, nginxReadyPort))
	if err != nil {
		return nil, nil, err
	}
	return out, in, nil
}

func startHop(ctx context.Context, ns, hop, node, conf string) (*corev1.Pod, error) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "nginx-" + hop}, Data: map[string]string{"nginx.conf": conf}}
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating the nginx-%s ConfigMap: %w", hop, err)
	}
	if err := c.Apply(ctx, ns, fmt.Sprintf(nginxPod, node, hop, nginxReadyPort)); err != nil {
		return nil, err
	}
	pods, err := c.WaitForPods(ctx, ns, "app=nginx-"+hop, 1, 2*time.Minute)
	if err != nil {
		logs, _ := c.Logs(ctx, ns, "nginx-"+hop, "")
		return nil, fmt.Errorf("nginx %s hop: %w; its log:\n%s", hop, err, logs)
	}
	return &pods[0], nil
}

// checkNginxMTLS checks that the inbound hop does what the benchmark says it measures: it
// refuses a TLS client without a certificate, answers one with the outbound hop's
// certificate, and its access log shows TLS 1.3 connections whose client certificate it
// verified (the ones the outbound hop made during the runs). It returns a summary for the log.
func checkNginxMTLS(ctx context.Context, ns, inIP string, certs *nginxCerts) (string, error) {
	addr := net.JoinHostPort(inIP, fmt.Sprint(nginxInHTTPPort))
	// Without a client certificate the TLS 1.3 handshake completes on the client's side; the
	// server's refusal arrives as an alert on the first read.
	reply, err := tlsRequest(ctx, addr, certs.clientConfig(false))
	if err == nil {
		return "", fmt.Errorf("nginx inbound hop %s answered a client without a certificate: %q; want a refused handshake", addr, reply)
	}
	refusal := fmt.Sprintf("refused (%v)", err)
	if reply, err = tlsRequest(ctx, addr, certs.clientConfig(true)); err != nil {
		return "", fmt.Errorf("nginx inbound hop %s with the outbound hop's certificate: %w", addr, err)
	}
	if !strings.HasPrefix(reply, "HTTP/1.1 200") {
		return "", fmt.Errorf("nginx inbound hop %s with the outbound hop's certificate answered %q; want HTTP/1.1 200 from the server", addr, reply)
	}
	logs, err := c.Logs(ctx, ns, "nginx-in", "")
	if err != nil {
		return "", err
	}
	var verified, reused int
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "protocol=TLSv1.3 verify=SUCCESS") && strings.Contains(l, "CN=nginx-out") {
			verified++
			if strings.Contains(l, "reused=r") {
				reused++
			}
		}
	}
	if verified == 0 {
		return "", fmt.Errorf("the nginx inbound hop's log has no TLS 1.3 connection with a verified client certificate from nginx-out:\n%s", logs)
	}
	return fmt.Sprintf("%d TLS 1.3 connections with nginx-out's verified certificate (%d resumed sessions); without a certificate: %s",
		verified, reused, refusal), nil
}

// tlsRequest sends one HTTP/1.1 request over TLS to addr (reached through the cluster's
// fabric) and returns the start of the answer.
func tlsRequest(ctx context.Context, addr string, cfg *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := c.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer raw.Close()
	deadline, _ := ctx.Deadline()
	raw.SetDeadline(deadline)
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	if _, err := io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return "", fmt.Errorf("writing to %s: %w", addr, err)
	}
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(conn, buf, 12)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return string(buf[:n]), fmt.Errorf("reading from %s: %w", addr, err)
	}
	if n == 0 {
		return "", fmt.Errorf("reading from %s: %w", addr, err)
	}
	return string(buf[:n]), nil
}
