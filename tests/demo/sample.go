package demo

import "fmt"

// sample is the demo's application, in the seeds' shape: a client, an nginx-like service with
// v1 and v2 deployments, hello and world services, and another pod with its own identity that
// the policy step refuses. Every app is the echo server (tests/apps/echo), which answers with
// its pod name, version and the source address it saw. The client runs on node1, nginx v1 on
// node2, so their traffic crosses between nodes.
func sample(node1, node2 string) string {
	return `
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: other}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nginx}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: hello}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: world}
` + deployment("client", "client", "v1", node1) +
		deployment("other", "other", "v1", node1) +
		deployment("nginx-v1", "nginx", "v1", node2) +
		deployment("nginx-v2", "nginx", "v2", node1) +
		deployment("hello", "hello", "v1", node2) +
		deployment("world", "world", "v1", node1) +
		service("nginx") + service("hello") + service("world")
}

func deployment(name, app, version, node string) string {
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s, version: %[3]s}}
  template:
    metadata: {labels: {app: %[2]s, version: %[3]s}}
    spec:
      serviceAccountName: %[2]s
      nodeSelector: {kubernetes.io/hostname: %[4]s}
      containers:
      - name: echo
        image: ambit.local/echo:dev
        imagePullPolicy: Never
        args: [server, --http, "8080"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: SERVICE_ACCOUNT, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
        - {name: VERSION, valueFrom: {fieldRef: {fieldPath: "metadata.labels['version']"}}}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
`, name, app, version, node)
}

func service(app string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: http, port: 80, targetPort: 8080}
`, app)
}

// allowClient is the L4 policy of the policy step: nginx accepts only the client's identity.
const allowClient = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nginx-allow-client}
spec:
  selector: {matchLabels: {app: nginx}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
`
