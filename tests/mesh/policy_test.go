package mesh

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// strictMTLS refuses plaintext in the whole namespace.
const strictMTLS = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
`

// allowClient lets only the client's identity reach the server.
const allowClient = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
`

// denyPort9001 refuses the client on the server's TCP port 9001 only, so that a connection
// to 9000 serves as the control that must stay open.
const denyPort9001 = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-9001}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
    to:
    - operation: {ports: ["9001"]}
`

func (cp *capture) checkStrict(ctx context.Context, t *testing.T) {
	if err := c.Apply(ctx, cp.ns, strictMTLS); err != nil {
		t.Fatal(err)
	}
	var last error
	err := c.Wait(ctx, 30*time.Second, "plaintext from optout refused", func(ctx context.Context) (bool, error) {
		_, last = runClientIn(ctx, cp.ns, "optout", cp.serverURL, 1, "")
		return last != nil, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("optout refused: %v", last)
	if _, err := runClientIn(ctx, cp.ns, "hostnet", cp.serverURL, 1, ""); err == nil {
		t.Errorf("the host-network pod reached the server in plaintext under STRICT")
	}
	if _, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, ""); err != nil {
		t.Errorf("mesh client under STRICT: %v", err)
	}
	if _, err := runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, ""); err != nil {
		t.Errorf("mesh pod other under STRICT: %v", err)
	}
}

func (cp *capture) checkAllow(ctx context.Context, t *testing.T) {
	defer cp.allowOnlyClient(ctx, t)()
	if _, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, ""); err != nil {
		t.Errorf("the principal the ALLOW policy names: %v", err)
	}
	ztName, logs := ztunnelLogs(ctx, t, cp.serverNode)
	if other := "src.identity=spiffe://cluster.local/ns/" + cp.ns + "/sa/other"; !logLine(logs, "connection complete", other, "policy=deny") {
		t.Errorf("ztunnel %s's access log has no denied connection with %s", ztName, other)
	}
}

// allowOnlyClient applies allowClient and waits until the ztunnels refuse other; the function
// it returns removes the policy and waits until other is let in again.
func (cp *capture) allowOnlyClient(ctx context.Context, t *testing.T) (undo func()) {
	policy := fmt.Sprintf(allowClient, cp.ns)
	if err := c.Apply(ctx, cp.ns, policy); err != nil {
		t.Fatal(err)
	}
	undo = func() {
		if err := c.Delete(ctx, cp.ns, policy); err != nil {
			t.Error(err)
		}
		// Later steps need other let in again.
		err := c.Wait(ctx, 30*time.Second, "other allowed again", func(ctx context.Context) (bool, error) {
			_, err := runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, "")
			return err == nil, nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	var last error
	err := c.Wait(ctx, 30*time.Second, "other refused by the ALLOW policy", func(ctx context.Context) (bool, error) {
		_, last = runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, "")
		return last != nil, nil
	})
	if err != nil {
		undo()
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("other refused: %v", last)
	return undo
}

// logLine says whether a line of logs contains every one of want.
func logLine(logs string, want ...string) bool {
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}

func (cp *capture) checkDenyOpen(ctx context.Context, t *testing.T) {
	h, err := podNetNS(cp.pods["client"])
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	serverIP := cp.pods["server"].Status.PodIP
	denied, err := dialEcho(ctx, h, net.JoinHostPort(serverIP, "9001"))
	if err != nil {
		t.Fatal(err)
	}
	defer denied.Close()
	control, err := dialEcho(ctx, h, net.JoinHostPort(serverIP, "9000"))
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	for _, e := range []*echoConn{denied, control} {
		if ip, _, _ := net.SplitHostPort(e.SourceAddr); e.Pod != "server" || ip != cp.pods["client"].Status.PodIP {
			t.Fatalf("connection from the client's netns answered by %q seeing %s; want server seeing %s", e.Pod, e.SourceAddr, cp.pods["client"].Status.PodIP)
		}
		if err := e.roundTrip("before"); err != nil {
			t.Fatal(err)
		}
	}
	policy := fmt.Sprintf(denyPort9001, cp.ns)
	if err := c.Apply(ctx, cp.ns, policy); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(ctx, cp.ns, policy); err != nil {
			t.Error(err)
		}
	}()
	var ended error
	err = c.Wait(ctx, 30*time.Second, "the open connection to 9001 ended by the DENY policy", func(ctx context.Context) (bool, error) {
		err := denied.roundTrip("ping")
		if err == nil {
			return false, nil
		}
		if isTimeout(err) {
			return false, fmt.Errorf("the denied connection hung instead of ending: %w", err)
		}
		ended = err
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("the open connection to 9001 ended: %v", ended)
	if err := control.roundTrip("after"); err != nil {
		t.Errorf("the control connection to 9000 (not denied) did not survive the policy: %v", err)
	}
	if err := echoOnce(ctx, h, net.JoinHostPort(serverIP, "9001")); err == nil {
		t.Errorf("a new connection to 9001 got through the DENY policy")
	}
	if err := echoOnce(ctx, h, net.JoinHostPort(serverIP, "9000")); err != nil {
		t.Errorf("a new connection to 9000 (not denied): %v", err)
	}
	ztName, logs := ztunnelLogs(ctx, t, cp.serverNode)
	if !logLine(logs, "closing a connection a policy change denies", cp.pods["client"].Status.PodIP, "port=9001") {
		t.Errorf("ztunnel %s's log does not say it closed the client's connection to 9001", ztName)
	}
}
