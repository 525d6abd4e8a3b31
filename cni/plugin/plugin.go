// Package plugin is ambit-cni, the chained CNI plugin: on ADD it asks the node's cni-agent
// to enrol the pod (the agent installs the redirection and hands the pod to ztunnel before
// the plugin returns), then passes the previous plugin's result through; DEL tells the agent
// the pod is gone. All CNI spec versions are accepted.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

// Type is the plugin's type in a conflist and its binary's name.
const Type = "ambit-cni"

// DefaultTimeout bounds one call to the agent; enrolment waits for ztunnel's Ack.
const DefaultTimeout = 30 * time.Second

// delTimeout bounds DEL's call: DEL succeeds whatever the agent says.
const delTimeout = 5 * time.Second

// Config is the plugin's entry in the conflist.
type Config struct {
	types.PluginConf
	// AgentSocket is the cni-agent's Unix socket; default agentapi.DefaultSocket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// TimeoutSeconds bounds one call to the agent; default 30.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// k8sArgs are the CNI_ARGS the container runtime sets for a Kubernetes pod.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // names fixed by the runtime
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// ParseConfig decodes the plugin's stdin, including its prevResult.
func ParseConfig(stdin []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, fmt.Errorf("parsing %s config: %w", Type, err)
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, fmt.Errorf("parsing %s prevResult: %w", Type, err)
		}
	}
	if c.AgentSocket == "" {
		c.AgentSocket = agentapi.DefaultSocket
	}
	if c.TimeoutSeconds < 0 {
		return nil, fmt.Errorf("parsing %s config: timeoutSeconds is %d; expected a positive number", Type, c.TimeoutSeconds)
	}
	return &c, nil
}

// Plugin runs the CNI commands; Stdout receives ADD's result.
type Plugin struct {
	Stdout io.Writer
}

// Funcs returns the plugin's commands for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// About is the plugin's one-line description for skel.
const About = "ambit-cni: enrols pods in the Ambit ambient mesh through the node's cni-agent"

// Versions are the CNI spec versions the plugin supports.
var Versions = version.All

func (c *Config) client() *agentapi.Client {
	timeout := DefaultTimeout
	if c.TimeoutSeconds > 0 {
		timeout = time.Duration(c.TimeoutSeconds) * time.Second
	}
	return agentapi.NewClient(c.AgentSocket, timeout)
}

// podRequest builds the agent request; ok is false when the call is not for a Kubernetes pod.
func podRequest(args *skel.CmdArgs, prev types.Result) (agentapi.PodRequest, bool, error) {
	var k k8sArgs
	k.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return agentapi.PodRequest{}, false, fmt.Errorf("parsing CNI_ARGS: %w", err)
	}
	req := agentapi.PodRequest{
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
		IfName:       args.IfName,
		PodNamespace: string(k.K8S_POD_NAMESPACE),
		PodName:      string(k.K8S_POD_NAME),
		PodUID:       string(k.K8S_POD_UID),
	}
	if prev != nil {
		res, err := current.NewResultFromResult(prev)
		if err != nil {
			return req, false, fmt.Errorf("reading prevResult: %w", err)
		}
		for _, ip := range res.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
				req.IPs = append(req.IPs, a.Unmap())
			}
		}
	}
	return req, req.PodName != "" && req.PodNamespace != "", nil
}

// Add enrols the pod (if the agent's selectors match) and prints prevResult unchanged.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return fmt.Errorf("%s is a chained plugin: it needs the prevResult of a plugin before it in the conflist (e.g. bridge)", Type)
	}
	req, isPod, err := podRequest(args, conf.PrevResult)
	if err != nil {
		return err
	}
	if isPod {
		if _, err := conf.client().Call(context.Background(), agentapi.OpAdd, req); err != nil {
			return fmt.Errorf("%s: enrolling pod %s/%s: %w", Type, req.PodNamespace, req.PodName, err)
		}
	}
	return conf.PrevResult.PrintTo(p.Stdout)
}

// Del tells the agent the pod is gone. It never fails for an unknown pod or an absent agent:
// the agent also learns of deleted pods from the API server, and a failing DEL would block
// the pod's removal.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	req, isPod, err := podRequest(args, nil)
	if err != nil || !isPod {
		return nil
	}
	// The answer is dropped on purpose, see above; the agent gets a short time to answer.
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	_, _ = conf.client().Call(ctx, agentapi.OpDel, req)
	return nil
}

// Check asks the agent whether the pod is enrolled as its selectors say it should be.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return fmt.Errorf("%s CHECK: no prevResult", Type)
	}
	req, isPod, err := podRequest(args, conf.PrevResult)
	if err != nil || !isPod {
		return err
	}
	if _, err := conf.client().Call(context.Background(), agentapi.OpCheck, req); err != nil {
		return fmt.Errorf("%s: checking pod %s/%s: %w", Type, req.PodNamespace, req.PodName, err)
	}
	return nil
}

// GC (CNI 1.1) has nothing to collect: the agent drops pods it learns are gone from the API
// server.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	_, err := ParseConfig(args.StdinData)
	return err
}

// Status (CNI 1.1) always reports ready: an unavailable agent or ztunnel fails only the ADD of
// pods selected for ambient, with its reason, and must not stop every other pod on the node.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	_, err := ParseConfig(args.StdinData)
	return err
}
