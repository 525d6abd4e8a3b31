package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

// fakeAgent serves the agent API on a Unix socket and records the calls.
type fakeAgent struct {
	socket string
	mu     sync.Mutex // guards calls and answer
	calls  []agentapi.Op
	reqs   []agentapi.PodRequest
	answer error
}

func startAgent(t testing.TB) *fakeAgent {
	t.Helper()
	a := &fakeAgent{socket: filepath.Join(t.TempDir(), "agent.sock")}
	ln, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &agentapi.Server{Handle: func(_ context.Context, op agentapi.Op, req agentapi.PodRequest) (bool, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.calls = append(a.calls, op)
		a.reqs = append(a.reqs, req)
		return a.answer == nil, a.answer
	}}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		stop()
		<-served
	})
	return a
}

func (a *fakeAgent) Calls() []agentapi.Op {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

// prevResults are a bridge-like result in every version that has prevResult.
var prevResults = map[string]string{
	"0.3.0": `{"cniVersion":"0.3.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}`,
	"0.3.1": `{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}`,
	"0.4.0": `{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}`,
	"1.0.0": `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}`,
	"1.1.0": `{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}`,
}

func config(version, socket string, withPrev bool) []byte {
	c := fmt.Sprintf(`{"cniVersion":%q,"name":"k8s-pod-network","type":"ambit-cni","agentSocket":%q`, version, socket)
	if withPrev {
		c += `,"prevResult":` + prevResults[version]
	}
	return []byte(c + "}")
}

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=uid-1"

func cmdArgs(stdin []byte, args string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "abc", Netns: "/var/run/netns/x", IfName: "eth0", Args: args, StdinData: stdin}
}

func sameJSON(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("output %q is not JSON: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	// Result types of some versions print an empty "dns" object, others omit it.
	for _, m := range []any{g, w} {
		if mm, ok := m.(map[string]any); ok {
			if d, ok := mm["dns"].(map[string]any); ok && len(d) == 0 {
				delete(mm, "dns")
			}
		}
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("result = %s\nwant %s", got, want)
	}
}

func TestAddPassesPrevResultThrough(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			a := startAgent(t)
			var out bytes.Buffer
			p := &Plugin{Stdout: &out}
			if err := p.Add(cmdArgs(config(v, a.socket, true), podArgs)); err != nil {
				t.Fatalf("Add: %v", err)
			}
			sameJSON(t, out.Bytes(), []byte(prevResults[v]))
			want := agentapi.PodRequest{ContainerID: "abc", Netns: "/var/run/netns/x", IfName: "eth0",
				PodNamespace: "ns", PodName: "web-0", PodUID: "uid-1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}
			if len(a.reqs) != 1 || !reflect.DeepEqual(a.reqs[0], want) {
				t.Errorf("agent got %+v, want [%+v]", a.reqs, want)
			}
		})
	}
}

func TestAddErrors(t *testing.T) {
	a := startAgent(t)
	a.answer = errors.New("ztunnel not connected on node n1")
	p := &Plugin{Stdout: &bytes.Buffer{}}
	tests := []struct {
		name  string
		args  *skel.CmdArgs
		wants []string
	}{
		{"agent refuses", cmdArgs(config("1.0.0", a.socket, true), podArgs), []string{"ns/web-0", "ztunnel not connected on node n1"}},
		{"agent unreachable", cmdArgs(config("1.0.0", "/nonexistent/agent.sock", true), podArgs), []string{"unreachable", "/nonexistent/agent.sock", "DaemonSet"}},
		{"not chained", cmdArgs(config("1.0.0", a.socket, false), podArgs), []string{"chained plugin"}},
		{"bad json", cmdArgs([]byte(`{"cniVersion":`), podArgs), []string{"parsing ambit-cni config"}},
		{"bad prevResult", cmdArgs([]byte(`{"cniVersion":"1.0.0","prevResult":{"ips":"x"}}`), podArgs), []string{"prevResult"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.Add(tt.args)
			if err == nil {
				t.Fatal("Add succeeded; want an error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestAddOutsideKubernetesSkipsAgent(t *testing.T) {
	a := startAgent(t)
	var out bytes.Buffer
	if err := (&Plugin{Stdout: &out}).Add(cmdArgs(config("1.0.0", a.socket, true), "")); err != nil {
		t.Fatal(err)
	}
	if calls := a.Calls(); len(calls) != 0 {
		t.Errorf("agent called %q for a non-Kubernetes container", calls)
	}
	sameJSON(t, out.Bytes(), []byte(prevResults["1.0.0"]))
}

func TestDelAndCheck(t *testing.T) {
	a := startAgent(t)
	p := &Plugin{Stdout: &bytes.Buffer{}}
	if err := p.Del(cmdArgs(config("1.0.0", a.socket, false), podArgs)); err != nil {
		t.Errorf("Del of an unknown pod: %v", err)
	}
	if err := p.Del(cmdArgs(config("1.0.0", "/nonexistent/agent.sock", false), podArgs)); err != nil {
		t.Errorf("Del without an agent: %v", err)
	}
	if err := p.Check(cmdArgs(config("1.0.0", a.socket, true), podArgs)); err != nil {
		t.Errorf("Check: %v", err)
	}
	a.mu.Lock()
	a.answer = errors.New("pod ns/web-0 should be enrolled but is not")
	a.mu.Unlock()
	if err := p.Check(cmdArgs(config("1.0.0", a.socket, true), podArgs)); err == nil || !strings.Contains(err.Error(), "should be enrolled") {
		t.Errorf("Check = %v; want the agent's error", err)
	}
	if got, want := a.Calls(), []agentapi.Op{agentapi.OpDel, agentapi.OpCheck, agentapi.OpCheck}; !slices.Equal(got, want) {
		t.Errorf("agent calls = %q, want %q", got, want)
	}
}

// buildPlugin builds the plugin binary into a temporary directory.
func buildPlugin(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), Type)
	build := exec.Command("go", "build", "-o", bin, "github.com/ambit-mesh/ambit/cni/cmd/ambit-cni")
	// Static, as the image carries it (and as make builds it: the race run's cgo setting would
	// compile the standard library once more).
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", Type, err, out)
	}
	return bin
}

// runBinary runs bin as a container runtime runs a CNI plugin.
func runBinary(bin, command string, stdin []byte) ([]byte, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=abc", "CNI_NETNS=/var/run/netns/x",
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "CNI_ARGS="+podArgs)
	cmd.Stdin = bytes.NewReader(stdin)
	return cmd.Output()
}

// TestBinary runs the built plugin the way a container runtime does.
func TestBinary(t *testing.T) {
	bin := buildPlugin(t)
	a := startAgent(t)
	run := func(command string, stdin []byte) ([]byte, error) { return runBinary(bin, command, stdin) }
	out, err := run("ADD", config("1.0.0", a.socket, true))
	if err != nil {
		t.Fatalf("ADD: %v (%s)", err, out)
	}
	sameJSON(t, out, []byte(prevResults["1.0.0"]))
	if out, err := run("DEL", config("1.0.0", a.socket, false)); err != nil {
		t.Fatalf("DEL: %v (%s)", err, out)
	}
	out, err = run("VERSION", []byte(`{"cniVersion":"1.0.0"}`))
	if err != nil || !strings.Contains(string(out), `"0.3.1"`) || !strings.Contains(string(out), `"1.1.0"`) {
		t.Errorf("VERSION = %s, %v; want every spec version", out, err)
	}
	for _, cmd := range []string{"GC", "STATUS"} {
		if out, err := run(cmd, config("1.1.0", "/nonexistent/agent.sock", false)); err != nil {
			t.Errorf("%s: %v (%s); want success", cmd, err, out)
		}
	}
	a.mu.Lock()
	a.answer = errors.New("ztunnel not connected on node n1")
	a.mu.Unlock()
	out, err = run("ADD", config("1.0.0", a.socket, true))
	if err == nil || !strings.Contains(string(out), "ztunnel not connected on node n1") {
		t.Errorf("ADD with ztunnel down = %s, %v; want a CNI error naming the node", out, err)
	}
}

// BenchmarkBinary times the plugin's exec as the container runtime pays it: VERSION (start-up
// and exit only) and ADD with a fake agent on a Unix socket that enrols at once, next to
// /bin/true for the machine's cost of any exec. p50-ms and p99-ms are per exec:
//
//	go test -run '^$' -bench BenchmarkBinary -benchtime 200x ./cni/plugin
func BenchmarkBinary(b *testing.B) {
	bin := buildPlugin(b)
	a := startAgent(b)
	for _, c := range []struct {
		name, bin, command string
		stdin              []byte
	}{
		{"true", "/bin/true", "VERSION", nil},
		{"VERSION", bin, "VERSION", []byte(`{"cniVersion":"1.0.0"}`)},
		{"ADD", bin, "ADD", config("1.0.0", a.socket, true)},
	} {
		b.Run(c.name, func(b *testing.B) {
			var took []time.Duration
			for b.Loop() {
				began := time.Now()
				if out, err := runBinary(c.bin, c.command, c.stdin); err != nil {
					b.Fatalf("%s: %v (%s)", c.command, err, out)
				}
				took = append(took, time.Since(began))
			}
			slices.Sort(took)
			for _, q := range []struct {
				name string
				at   float64
			}{{"p50-ms", 0.50}, {"p99-ms", 0.99}} {
				b.ReportMetric(float64(took[int(q.at*float64(len(took)-1))])/1e6, q.name)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	for v := range prevResults {
		f.Add(config(v, "/s", true))
	}
	f.Add([]byte(`{"cniVersion":"0.2.0","timeoutSeconds":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil && c.AgentSocket == "" {
			t.Errorf("ParseConfig(%q) left AgentSocket empty", b)
		}
	})
}
