// Package agentapi is the node-local API between the ambit-cni plugin and the cni-agent:
// JSON over HTTP on a Unix socket. The plugin asks the agent to enrol a pod during CNI ADD
// and to forget it during DEL; the agent decides from the pod's and namespace's labels.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// DefaultSocket is where the agent serves this API on the node.
const DefaultSocket = "/var/run/ambit/cni-agent.sock"

// The API's endpoints; each takes a PodRequest by POST and answers a Response.
const (
	PathAdd   = "/v1/cni/add"
	PathDel   = "/v1/cni/del"
	PathCheck = "/v1/cni/check"
)

// PodRequest describes the pod of one CNI call.
type PodRequest struct {
	ContainerID  string       `json:"containerID"`
	Netns        string       `json:"netns"`
	IfName       string       `json:"ifName"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	PodUID       string       `json:"podUID,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
}

// Response is the agent's answer. Error is empty on success; otherwise it is written for the
// user who reads the kubelet's event ("ztunnel not connected on node n1").
type Response struct {
	Enrolled bool   `json:"enrolled"`
	Error    string `json:"error,omitempty"`
}

// ErrUnreachable is wrapped when the agent cannot be reached at all.
var ErrUnreachable = errors.New("cni-agent unreachable")

// Client calls the agent.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent at socket; each call takes at most timeout.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Call posts req to path and returns the agent's answer; an answer with an Error becomes
// an error with that text.
func (c *Client) Call(ctx context.Context, path string, req PodRequest) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cni-agent"+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w (is the Ambit cni-agent DaemonSet running on this node?)", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading cni-agent's answer: %w", err)
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("cni-agent answered %s with %q: %w", resp.Status, b, err)
	}
	if r.Error != "" {
		return &r, errors.New(r.Error)
	}
	if resp.StatusCode != http.StatusOK {
		return &r, fmt.Errorf("cni-agent answered %s", resp.Status)
	}
	return &r, nil
}

// Handler serves the API with fn, which answers one request: its error becomes the Response's
// Error (with status 503 so nothing mistakes it for success). What fn registers with
// AfterReply runs once the answer has been sent.
func Handler(fn func(ctx context.Context, path string, req PodRequest) (enrolled bool, err error)) http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{PathAdd, PathDel, PathCheck} {
		mux.HandleFunc("POST "+p, func(w http.ResponseWriter, r *http.Request) {
			var req PodRequest
			dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
			if err := dec.Decode(&req); err != nil {
				reply(w, http.StatusBadRequest, Response{Error: fmt.Sprintf("decoding request: %v", err)})
				return
			}
			after := &afterReply{}
			enrolled, err := fn(context.WithValue(r.Context(), afterKey{}, after), p, req)
			if err != nil {
				reply(w, http.StatusServiceUnavailable, Response{Enrolled: enrolled, Error: err.Error()})
			} else {
				reply(w, http.StatusOK, Response{Enrolled: enrolled})
			}
			for _, f := range after.fns {
				f()
			}
		})
	}
	return mux
}

// reply sends the answer at once, with its length, so the plugin has all of it and can return
// while the handler goes on with what was left for after the reply.
func reply(w http.ResponseWriter, code int, r Response) {
	b, _ := json.Marshal(r)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

type afterKey struct{}

// afterReply holds the work a request left for after its answer; only the handler's goroutine
// touches it.
type afterReply struct{ fns []func() }

// AfterReply runs f once the answer to the request of ctx (a Handler call) has been sent,
// or at once outside one. The plugin, and the pod sandbox the container runtime is creating
// behind it, do not wait for f: it is for work the answer does not depend on, which would
// otherwise compete with it for the node's CPU.
func AfterReply(ctx context.Context, f func()) {
	if a, ok := ctx.Value(afterKey{}).(*afterReply); ok {
		a.fns = append(a.fns, f)
		return
	}
	f()
}
